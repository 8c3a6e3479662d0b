"""The input and output guard nodes: check the user's message or the draft reply, record the verdict.

The output guard node makes the final decision on a draft: only a draft it passes becomes the
assistant's message. A streamed draft comes with its last chunk check, which covered exactly the draft:
that verdict is the decision, so the guard is not asked (nor the audit log written) twice.
"""

from __future__ import annotations

from dataclasses import replace

from langchain_core.messages import AIMessage
from langgraph.runtime import Runtime

from guardgraph.nodes.checks.run import GuardSettings, check
from guardgraph.nodes.checks.verdict import Role, Verdict, undecided_verdict
from guardgraph.nodes.context import Context, run_context, thread_id
from guardgraph.nodes.guards.base import Guard
from guardgraph.nodes.handoff import Draft, Handoff
from guardgraph.nodes.speculation import turn_key
from guardgraph.nodes.state import GuardedChatState, Node, StateUpdate
from guardgraph.policies.model import Policy

NO_DRAFT = "no draft reply to check (the turn was resumed away from the process that wrote it)"


def run_settings(settings: GuardSettings, context: Context) -> GuardSettings:
    """The deployment's guard settings with what this run may change (a shorter timeout)."""
    timeout_s = context.timeout(settings.timeout_s)
    return settings if timeout_s == settings.timeout_s else replace(settings, timeout_s=timeout_s)


def _check(
    role: Role,
    guard: Guard,
    policy: Policy,
    settings: GuardSettings,
    state: GuardedChatState,
    runtime: Runtime[Context],
    reply: str | None = None,
) -> Verdict:
    """Check the last user message (``User``) or ``reply`` (``Agent``) under the run's policy and settings."""
    context = run_context(runtime)
    policy, settings = context.resolve_policy(policy), run_settings(settings, context)
    return check(guard, role, state["messages"], policy, settings, reply=reply, thread_id=thread_id(runtime))


def make_input_guard_node(guard: Guard, policy: Policy, settings: GuardSettings) -> Node:
    """A node that checks the last user message."""

    def input_guard(state: GuardedChatState, runtime: Runtime[Context]) -> StateUpdate:
        verdict = _check("User", guard, policy, settings, state, runtime)
        return {"verdicts": [verdict.to_dict()], "blocked": verdict.blocks, "refused": False, "error": None}

    return input_guard


def make_output_guard_node(guard: Guard, policy: Policy, settings: GuardSettings, drafts: Handoff[Draft]) -> Node:
    """A node that decides on the turn's draft reply, taken from ``drafts``."""

    def output_guard(state: GuardedChatState, runtime: Runtime[Context]) -> StateUpdate:
        draft = drafts.take(turn_key(state, runtime))
        if draft is None:
            verdict = undecided_verdict("Agent", guard.name, NO_DRAFT)
            if settings.audit is not None:
                settings.audit.record(verdict, thread_id=thread_id(runtime), guard=guard, policy=policy)
            return reply_checked(verdict, "")
        verdict = draft.verdict or _check("Agent", guard, policy, settings, state, runtime, reply=draft.text)
        return reply_checked(verdict, draft.text)

    return output_guard


def reply_checked(verdict: Verdict, draft: str) -> StateUpdate:
    """The draft's verdict; a draft that passed becomes the assistant's message, only now."""
    if verdict.blocks:
        return {"verdicts": [verdict.to_dict()], "blocked": True}
    return {"verdicts": [verdict.to_dict()], "blocked": False, "messages": [AIMessage(draft)]}
