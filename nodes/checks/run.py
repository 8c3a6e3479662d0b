"""Asking a guard: one bounded, fail-closed, audited check, the same for every caller.

:func:`check` is what the graph's guard nodes, the chunk checks of a streamed reply and
``GuardedChatModel`` call: it builds the request for a role (:func:`guard_request`), asks the guard
within ``timeout_s``, turns every failure into a verdict that blocks, applies the fail-open and shadow
modes, and writes one audit record.

Failing closed is the default everywhere here. A guard that raises, runs past ``timeout_s``, returns
empty or unparseable text, or names codes the policy does not have yields an ERROR or UNPARSEABLE
verdict, which blocks; the reason is in the verdict and in the audit log. ``fail_open`` turns such
verdicts into BYPASS, logged as such. Content the guards cannot read at all (images, unknown roles, an
empty message) is rejected whatever the modes say: that is bad input, not an undecided guard.
"""

from __future__ import annotations

import contextvars
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from guardgraph.nodes import defaults
from guardgraph.nodes.checks.audit import AuditLog
from guardgraph.nodes.checks.request import ConversationError, GuardRequest, guard_request
from guardgraph.nodes.checks.verdict import BAD_INPUT, Outcome, Role, Verdict, undecided_verdict
from guardgraph.nodes.guards.base import Guard
from guardgraph.policies.model import Policy

logger = logging.getLogger(__name__)
# Stands for the reply in a warm-up request: a warm-up reads only what comes before the reply's text.
ANY_REPLY = "..."


class GuardTimeoutError(TimeoutError):
    """The guard did not answer within ``GuardSettings.timeout_s``."""


@dataclass(frozen=True)
class GuardSettings:
    """How one side (input or output) asks its guard; the defaults fail closed.

    ``window_turns``: the latest turns the guard sees; ``timeout_s`` bounds one check (None: no limit);
    ``fail_open`` lets undecided checks through as BYPASS; ``shadow`` decides and logs but never blocks;
    ``audit`` receives one record per decision.
    """

    window_turns: int = defaults.WINDOW_TURNS
    fail_open: bool = False
    shadow: bool = False
    timeout_s: float | None = defaults.GUARD_TIMEOUT_S
    audit: AuditLog | None = None


def check(
    guard: Guard,
    role: Role,
    messages: Sequence[object],
    policy: Policy,
    settings: GuardSettings,
    *,
    reply: str | object | None = None,
    thread_id: str | None = None,
) -> Verdict:
    """Is the last user message (``User``) or ``reply`` to ``messages`` (``Agent``) safe under ``policy``?

    ``reply`` is the draft's text or an assistant message (its tool calls are checked too).
    """
    try:
        request = guard_request(role, messages, policy, settings.window_turns, reply)
    except ConversationError as error:
        verdict = undecided_verdict(role, getattr(guard, "name", "guard"), str(error), bad_input=True)
        if settings.audit is not None:
            settings.audit.record(verdict, request=None, thread_id=thread_id, guard=guard, policy=policy)
        return verdict
    return run_guard(guard, request, settings, thread_id)


def warm_reply_check(guard: Guard, messages: Sequence[object], policy: Policy, settings: GuardSettings) -> None:
    """Let ``guard`` compute ahead what every check of a reply to ``messages`` reads first (the policy and
    the conversation before the reply), where it can (``warm``; see ``LlamaGuard.warm``).

    It decides nothing: every check of the reply still runs in full and fails closed, so a warm-up that
    fails is only logged.
    """
    warm = getattr(guard, "warm", None)
    if warm is None:
        return
    try:
        warm(guard_request("Agent", messages, policy, settings.window_turns, reply=ANY_REPLY))
    except Exception as error:  # a missed warm-up only costs time
        logger.debug("guard warm-up failed: %s: %s", type(error).__name__, error)


def run_guard(guard: Guard, request: GuardRequest, settings: GuardSettings, thread_id: str | None = None) -> Verdict:
    """Ask the guard (bounded by the timeout); failures become ERROR verdicts; modes applied; audited."""
    started = time.perf_counter()
    name = getattr(guard, "name", "guard")
    try:
        verdict = call_with_timeout(lambda: guard.check(request), settings.timeout_s)
        if not isinstance(verdict, Verdict):
            raise TypeError(f"the guard returned {type(verdict).__name__}, not a Verdict")
    except Exception as error:  # a guard that breaks must never let content through silently
        elapsed = (time.perf_counter() - started) * 1000
        verdict = undecided_verdict(request.role, name, error_reason(error), latency_ms=elapsed)
    else:
        if not verdict.latency_ms:
            verdict = verdict.with_updates(latency_ms=(time.perf_counter() - started) * 1000)
    verdict = apply_modes(verdict, settings)
    if settings.audit is not None:
        settings.audit.record(verdict, request=request, thread_id=thread_id, guard=guard)
    return verdict


def error_reason(error: BaseException) -> str:
    """``Type: message`` of ``error``, followed by its root cause when there is one underneath (a client's
    "Connection error." says little; the refused connection under it says what an operator must fix)."""
    root, seen = error, {id(error)}
    while (below := root.__cause__ or root.__context__) is not None and id(below) not in seen:
        root = below
        seen.add(id(root))
    cause = f" ({_headline(root)})" if root is not error and first_line(root) else ""
    return _headline(error) + cause


def _headline(error: BaseException) -> str:
    line = first_line(error)
    return f"{type(error).__name__}: {line}" if line else type(error).__name__


def first_line(error: BaseException) -> str:
    """The first line of an error's message ("" when it has none)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else ""


def call_with_timeout(func: Callable[[], Verdict], timeout_s: float | None) -> Verdict:
    """Run ``func`` in a daemon worker thread and wait at most ``timeout_s`` seconds for it.

    A guard that hangs is abandoned (a daemon thread never blocks the process from exiting); its
    late answer is discarded. The caller's context variables (callbacks, tracing) go along.
    """
    if timeout_s is None:
        return func()
    result: list[Verdict] = []
    failure: list[BaseException] = []
    context = contextvars.copy_context()

    def target() -> None:
        try:
            result.append(context.run(func))
        except BaseException as error:
            failure.append(error)

    worker = threading.Thread(target=target, name="guardgraph-guard", daemon=True)
    worker.start()
    worker.join(timeout_s)
    if worker.is_alive():
        raise GuardTimeoutError(f"the guard did not answer within {timeout_s:g} s")
    if failure:
        raise failure[0]
    return result[0]


def apply_modes(verdict: Verdict, settings: GuardSettings) -> Verdict:
    """Fail-open turns an undecided verdict into BYPASS; shadow mode keeps the outcome but stops blocking.

    A guard that did say ``unsafe`` but named codes the policy lacks is not undecided: under fail-open
    it counts as UNSAFE (with the reason kept), never as a bypass. Bad input is never bypassed.
    """
    undecided = verdict.outcome in (Outcome.ERROR, Outcome.UNPARSEABLE)
    if undecided and settings.fail_open and not verdict.metadata.get(BAD_INPUT):
        said_unsafe = bool(verdict.categories) or (verdict.raw or "").strip().lower().startswith("unsafe")
        if verdict.outcome is Outcome.UNPARSEABLE and said_unsafe:
            verdict = verdict.with_updates(outcome=Outcome.UNSAFE)
        else:
            return verdict.with_updates(outcome=Outcome.BYPASS, reason=f"fail-open bypass: {verdict.reason}")
    if settings.shadow and verdict.blocks and not verdict.metadata.get(BAD_INPUT):
        return verdict.with_updates(enforced=False)
    return verdict
