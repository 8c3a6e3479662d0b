"""The refusal node: replaces a blocked turn's reply with the policy's words for what was violated."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from langchain_core.messages import AIMessage

from guardgraph.nodes.checks.verdict import Outcome, Verdict
from guardgraph.policies.model import Policy

UNDECIDED_REFUSAL = "I can't answer that right now: the safety check could not be completed."


def refusal_text(verdict: Verdict, policy: Policy) -> str:
    """The category's own refusal where the policy has one, else the policy's default."""
    if verdict.outcome in (Outcome.ERROR, Outcome.UNPARSEABLE):
        return UNDECIDED_REFUSAL
    messages: list[str] = []
    for hit in verdict.categories:
        category = policy.category(hit.code)
        if category is not None and category.refusal and category.refusal not in messages:
            messages.append(category.refusal)
    return " ".join(messages) if messages else policy.default_refusal


def make_refuse_node(policy: Policy) -> Callable[[dict[str, Any]], dict[str, Any]]:
    def refuse(state: dict[str, Any]) -> dict[str, Any]:
        verdict = Verdict.from_dict(state["verdicts"][-1])
        message = AIMessage(
            refusal_text(verdict, policy),
            response_metadata={"guardgraph": {"refused": True, "role": verdict.role}},
        )
        return {"messages": [message], "draft": None, "refused": True}

    return refuse
