"""The input and output guard nodes: check the user's message or the draft reply, record the verdict.

The output guard node makes the final decision on a draft: only a draft it passes becomes the
assistant's message (a draft whose streamed chunks all passed is not checked twice: the chat node's last
check covered the complete draft and ``RecentVerdicts`` remembers it).
"""

from __future__ import annotations

from dataclasses import replace

from langchain_core.messages import AIMessage
from langgraph.runtime import Runtime

from guardgraph.nodes.checks.run import GuardSettings, check
from guardgraph.nodes.checks.verdict import Role, Verdict
from guardgraph.nodes.context import Context, run_context, thread_id
from guardgraph.nodes.guards.base import Guard
from guardgraph.nodes.state import GuardedChatState, Node, StateUpdate
from guardgraph.policies.model import Policy


def run_settings(settings: GuardSettings, context: Context) -> GuardSettings:
    """The deployment's guard settings with what this run may change (a shorter timeout)."""
    timeout_s = context.timeout(settings.timeout_s)
    return settings if timeout_s == settings.timeout_s else replace(settings, timeout_s=timeout_s)


def make_guard_node(role: Role, guard: Guard, policy: Policy, settings: GuardSettings) -> Node:
    """A node that checks the last user message (``User``) or the draft reply (``Agent``)."""

    def guard_node(state: GuardedChatState, runtime: Runtime[Context]) -> StateUpdate:
        context = run_context(runtime)
        verdict = check(
            guard,
            role,
            state["messages"],
            context.resolve_policy(policy),
            run_settings(settings, context),
            reply=state.get("draft") if role == "Agent" else None,
            thread_id=thread_id(runtime),
        )
        return user_checked(verdict) if role == "User" else reply_checked(verdict, state.get("draft") or "")

    guard_node.__name__ = f"{role.lower()}_guard"
    return guard_node


def user_checked(verdict: Verdict) -> StateUpdate:
    """A new turn: its first verdict, and nothing left over from the last turn."""
    return {"verdicts": [verdict.to_dict()], "blocked": verdict.blocks, "draft": None, "refused": False, "error": None}


def reply_checked(verdict: Verdict, draft: str) -> StateUpdate:
    """The draft's verdict; a draft that passed becomes the assistant's message, only now."""
    if verdict.blocks:
        return {"verdicts": [verdict.to_dict()], "blocked": True}
    return {"verdicts": [verdict.to_dict()], "blocked": False, "messages": [AIMessage(draft)], "draft": None}
