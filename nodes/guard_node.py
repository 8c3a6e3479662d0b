"""The input and output guard nodes: build the request, ask the guard, record the verdict.

Failing closed is the default everywhere here. A guard that raises, runs past ``timeout_s``, returns
empty or unparseable text, or names codes the policy does not have yields an ERROR or UNPARSEABLE
verdict, which blocks; the reason is in the verdict (graph state) and in the audit log. ``fail_open``
(per guard: the input and output nodes have their own settings) turns such verdicts into BYPASS,
logged as such. Content the guards cannot read at all (images, unknown roles, an empty message) is
rejected whatever the modes say: that is bad input, not an undecided guard.
"""

from __future__ import annotations

import contextvars
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from langchain_core.messages import AIMessage
from langchain_core.runnables import RunnableConfig

from guardgraph.nodes.checks.request import (
    ConversationError,
    GuardRequest,
    Turn,
    merge_consecutive,
    turns_from_messages,
    window,
)
from guardgraph.nodes.checks.verdict import Outcome, Role, Verdict
from guardgraph.nodes.guards.base import Guard, error_verdict
from guardgraph.policies.model import Policy

if TYPE_CHECKING:
    from guardgraph.nodes.checks.audit import AuditLog

INPUT_ERROR = "input_error"  # metadata flag: the content itself could not be checked


class GuardTimeoutError(TimeoutError):
    """The guard did not answer within ``GuardNodeSettings.timeout_s``."""


@dataclass(frozen=True)
class GuardNodeSettings:
    """How a guard node behaves; the defaults fail closed.

    ``timeout_s`` bounds one guard check (None: no limit); ``audit`` receives one record per decision.
    """

    window_turns: int = 6
    fail_open: bool = False
    shadow: bool = False
    timeout_s: float | None = 60.0
    audit: AuditLog | None = None


def build_request(role: Role, state: dict[str, Any], policy: Policy, window_turns: int) -> GuardRequest:
    """User check: the conversation up to the new user message. Agent check: plus the draft reply."""
    turns = turns_from_messages(state.get("messages", []))
    if role == "Agent":
        turns = merge_consecutive((*turns, Turn("assistant", state.get("draft") or "")))
    return GuardRequest(role, window(turns, window_turns), policy)


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


def run_guard(
    guard: Guard,
    request: GuardRequest,
    settings: GuardNodeSettings,
    thread_id: str | None = None,
) -> Verdict:
    """Ask the guard (bounded by the timeout); failures become ERROR verdicts; modes applied; audited."""
    started = time.perf_counter()
    name = getattr(guard, "name", "guard")
    try:
        verdict = call_with_timeout(lambda: guard.check(request), settings.timeout_s)
        if not isinstance(verdict, Verdict):
            raise TypeError(f"the guard returned {type(verdict).__name__}, not a Verdict")
    except Exception as error:  # a guard that breaks must never let content through silently
        elapsed = (time.perf_counter() - started) * 1000
        verdict = error_verdict(request, name, f"{type(error).__name__}: {error}", elapsed)
    else:
        if not verdict.latency_ms:
            verdict = verdict.with_updates(latency_ms=(time.perf_counter() - started) * 1000)
    verdict = apply_modes(verdict, settings)
    if settings.audit is not None:
        settings.audit.record(verdict, request=request, thread_id=thread_id, guard=guard)
    return verdict


def apply_modes(verdict: Verdict, settings: GuardNodeSettings) -> Verdict:
    """Fail-open turns an undecided verdict into BYPASS; shadow mode keeps the outcome but stops blocking.

    A guard that did say ``unsafe`` but named codes the policy lacks is not undecided: under fail-open
    it counts as UNSAFE (with the reason kept), never as a bypass. Bad input is never bypassed.
    """
    undecided = verdict.outcome in (Outcome.ERROR, Outcome.UNPARSEABLE)
    if undecided and settings.fail_open and not verdict.metadata.get(INPUT_ERROR):
        said_unsafe = bool(verdict.categories) or (verdict.raw or "").strip().lower().startswith("unsafe")
        if verdict.outcome is Outcome.UNPARSEABLE and said_unsafe:
            verdict = verdict.with_updates(outcome=Outcome.UNSAFE)
        else:
            return verdict.with_updates(outcome=Outcome.BYPASS, reason=f"fail-open bypass: {verdict.reason}")
    if settings.shadow and verdict.blocks and not verdict.metadata.get(INPUT_ERROR):
        return verdict.with_updates(enforced=False)
    return verdict


def input_error_verdict(role: Role, guard: Guard, reason: str) -> Verdict:
    """The verdict for content no guard can check (images, unknown roles, empty): always blocks."""
    return Verdict(
        role=role,
        outcome=Outcome.ERROR,
        guard=getattr(guard, "name", "guard"),
        reason=reason,
        metadata={INPUT_ERROR: True},
    )


def thread_of(config: RunnableConfig | None) -> str | None:
    """The LangGraph thread id of the run, when there is one."""
    if not config:
        return None
    value = (config.get("configurable") or {}).get("thread_id")
    return None if value is None else str(value)


def make_guard_node(
    role: Role, guard: Guard, policy: Policy, settings: GuardNodeSettings
) -> Callable[..., dict[str, Any]]:
    """A node that checks the last user message (``User``) or the draft reply (``Agent``)."""

    def guard_node(state: dict[str, Any], config: RunnableConfig) -> dict[str, Any]:
        thread_id = thread_of(config)
        try:
            request = build_request(role, state, policy, settings.window_turns)
        except ConversationError as error:
            verdict = input_error_verdict(role, guard, str(error))
            if settings.audit is not None:
                settings.audit.record(verdict, request=None, thread_id=thread_id, guard=guard, policy=policy)
        else:
            verdict = run_guard(guard, request, settings, thread_id)
        if role == "User":
            return {
                "verdicts": [verdict.to_dict()],
                "blocked": verdict.blocks,
                "draft": None,
                "refused": False,
                "error": None,
            }
        update: dict[str, Any] = {"verdicts": [*state.get("verdicts", []), verdict.to_dict()]}
        update["blocked"] = verdict.blocks
        if not verdict.blocks:  # the draft passed: only now does it become the assistant's message
            update["messages"] = [AIMessage(state.get("draft") or "")]
            update["draft"] = None
        return update

    guard_node.__name__ = f"{role.lower()}_guard"
    return guard_node
