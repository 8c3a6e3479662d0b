"""The refusal node: replaces a blocked turn's reply with the policy's words for what was violated."""

from __future__ import annotations

from langchain_core.messages import AIMessage
from langgraph.runtime import Runtime

from guardgraph.nodes.checks.verdict import Outcome, Verdict
from guardgraph.nodes.context import Context, run_context
from guardgraph.nodes.state import GuardedChatState, Node, StateUpdate
from guardgraph.policies.model import Policy


def refusal_text(verdict: Verdict, policy: Policy) -> str:
    """What the user is told, all of it policy data: the refusal for an undecided check, else the violated
    categories' own refusals, else the policy's default refusal."""
    if verdict.outcome in (Outcome.ERROR, Outcome.UNPARSEABLE):
        return policy.undecided_refusal
    messages: list[str] = []
    for hit in verdict.categories:
        category = policy.category(hit.code)
        if category is not None and category.refusal and category.refusal not in messages:
            messages.append(category.refusal)
    return " ".join(messages) if messages else policy.default_refusal


def make_refuse_node(policy: Policy) -> Node:
    def refuse(state: GuardedChatState, runtime: Runtime[Context]) -> StateUpdate:
        verdict = Verdict.from_dict(state["verdicts"][-1])
        message = AIMessage(
            refusal_text(verdict, run_context(runtime).resolve_policy(policy)),
            response_metadata={"guardgraph": {"refused": True, "role": verdict.role}},
        )
        return {"messages": [message], "refused": True}

    return refuse
