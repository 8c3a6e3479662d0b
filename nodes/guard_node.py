"""The input and output guard nodes: build the request, ask the guard, record the verdict."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from langchain_core.messages import AIMessage

from nodes.conversation import ConversationError, GuardRequest, Turn, turns_from_messages, window
from nodes.guards.base import Guard, error_verdict
from nodes.verdict import Outcome, Role, Verdict
from policies.model import Policy


@dataclass(frozen=True)
class GuardNodeSettings:
    """How a guard node behaves; the defaults fail closed."""

    window_turns: int = 6
    fail_open: bool = False
    shadow: bool = False


def build_request(role: Role, state: dict[str, Any], policy: Policy, window_turns: int) -> GuardRequest:
    """User check: the conversation up to the new user message. Agent check: plus the draft reply."""
    turns = turns_from_messages(state.get("messages", []))
    if role == "Agent":
        turns = (*turns, Turn("assistant", state.get("draft") or ""))
    return GuardRequest(role, window(turns, window_turns), policy)


def run_guard(guard: Guard, request: GuardRequest, settings: GuardNodeSettings) -> Verdict:
    """Ask the guard; an exception becomes an ERROR verdict, and fail-open or shadow mode are applied."""
    started = time.perf_counter()
    try:
        verdict = guard.check(request)
    except Exception as error:  # a guard that breaks must never let content through silently
        elapsed = (time.perf_counter() - started) * 1000
        verdict = error_verdict(request, getattr(guard, "name", "guard"), f"{type(error).__name__}: {error}", elapsed)
    return apply_modes(verdict, settings)


def apply_modes(verdict: Verdict, settings: GuardNodeSettings) -> Verdict:
    if verdict.outcome in (Outcome.ERROR, Outcome.UNPARSEABLE) and settings.fail_open:
        return verdict.with_updates(outcome=Outcome.BYPASS, reason=f"fail-open bypass: {verdict.reason}")
    if settings.shadow and verdict.blocks:
        return verdict.with_updates(enforced=False)
    return verdict


def make_guard_node(
    role: Role, guard: Guard, policy: Policy, settings: GuardNodeSettings
) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """A node that checks the last user message (``User``) or the draft reply (``Agent``)."""

    def guard_node(state: dict[str, Any]) -> dict[str, Any]:
        try:
            request = build_request(role, state, policy, settings.window_turns)
        except ConversationError as error:
            verdict = Verdict(role=role, outcome=Outcome.ERROR, guard=guard.name, reason=str(error))
        else:
            verdict = run_guard(guard, request, settings)
        if role == "User":
            return {"verdicts": [verdict.to_dict()], "blocked": verdict.blocks, "draft": None, "refused": False}
        update: dict[str, Any] = {"verdicts": [*state.get("verdicts", []), verdict.to_dict()]}
        update["blocked"] = verdict.blocks
        if not verdict.blocks:  # the draft passed: only now does it become the assistant's message
            update["messages"] = [AIMessage(state.get("draft") or "")]
            update["draft"] = None
        return update

    guard_node.__name__ = f"{role.lower()}_guard"
    return guard_node
