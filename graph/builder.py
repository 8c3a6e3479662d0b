"""Wire the guarded chat graph: START → input_guard → chat → output_guard → END, unsafe → refuse.

The input guard starts the chat model speculatively (cancelled if it blocks) and, when the output guard is
a guard of its own, warms it up for the reply's checks; the chat node releases tokens only as the output
guard passes them; the output guard node makes the final decision. Models,
guards and the default policy are closed over here; what may vary per run comes through
``Runtime[Context]`` (``guardgraph.nodes.context``). The speculative generation and the draft reply pass
between nodes through in-process handoffs (``guardgraph.nodes.handoff``), never through the state.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from langchain_core.language_models import BaseChatModel
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph

from guardgraph.nodes.chat import ChatNodeDeps, make_chat_node, make_reply_warmup
from guardgraph.nodes.checks.run import GuardSettings
from guardgraph.nodes.context import Context
from guardgraph.nodes.guard_node import make_input_guard_node, make_output_guard_node
from guardgraph.nodes.guards.base import Guard
from guardgraph.nodes.handoff import Draft, Handoff
from guardgraph.nodes.refuse import make_refuse_node
from guardgraph.nodes.speculation import speculation_handoff, speculative
from guardgraph.nodes.state import GuardedChatInput, GuardedChatState
from guardgraph.nodes.streaming.holdback import Chunking
from guardgraph.policies.model import Policy

GuardedChatGraph = CompiledStateGraph[GuardedChatState, Context, GuardedChatInput, GuardedChatState]


@dataclass
class GuardedChatDeps:
    """Everything the nodes need, injected: the server, the CLI, tests and notebooks build the same graph."""

    chat_model: BaseChatModel
    input_guard: Guard
    output_guard: Guard
    policy: Policy
    input_settings: GuardSettings = field(default_factory=GuardSettings)
    output_settings: GuardSettings = field(default_factory=GuardSettings)
    system_prompt: str | None = None
    speculate: bool = True
    chunking: Chunking = field(default_factory=Chunking)
    # Warm the output guard up for the reply beside the input check (with ``speculate``). None: only when
    # the output guard is not the input guard: one guard runs its checks one after another, so a warm-up
    # would sit between the input check and the first chunk's check, costing a forward pass of its own
    # to save that check the conversation's tokens.
    warm_output_guard: bool | None = None


def after_input_guard(state: GuardedChatState) -> str:
    return "refuse" if state.get("blocked", True) else "chat"


def after_chat(state: GuardedChatState) -> str:
    return END if state.get("error") else "output_guard"


def after_output_guard(state: GuardedChatState) -> str:
    return "refuse" if state.get("blocked", True) else END


def build_graph(deps: GuardedChatDeps, checkpointer: BaseCheckpointSaver | None = None) -> GuardedChatGraph:
    """Compile the guarded chat graph; pass a checkpointer to keep conversations by thread id."""
    speculations = speculation_handoff()
    drafts: Handoff[Draft] = Handoff()
    chat_deps = ChatNodeDeps(
        deps.chat_model,
        deps.output_guard,
        deps.policy,
        deps.output_settings,
        deps.system_prompt,
        speculations,
        drafts,
        deps.chunking,
    )
    input_guard = make_input_guard_node(deps.input_guard, deps.policy, deps.input_settings)
    if deps.speculate:
        warm = deps.output_guard is not deps.input_guard if deps.warm_output_guard is None else deps.warm_output_guard
        warmup = make_reply_warmup(chat_deps) if warm else None
        input_guard = speculative(input_guard, deps.chat_model, deps.system_prompt, speculations, warmup)
    chat = make_chat_node(chat_deps)
    output_guard = make_output_guard_node(deps.output_guard, deps.policy, deps.output_settings, drafts)

    builder = StateGraph(GuardedChatState, context_schema=Context, input_schema=GuardedChatInput)
    builder.add_node("input_guard", input_guard)
    builder.add_node("chat", chat)
    builder.add_node("output_guard", output_guard)
    builder.add_node("refuse", make_refuse_node(deps.policy))

    builder.add_edge(START, "input_guard")
    builder.add_conditional_edges("input_guard", after_input_guard, ["chat", "refuse"])
    builder.add_conditional_edges("chat", after_chat, ["output_guard", END])
    builder.add_conditional_edges("output_guard", after_output_guard, [END, "refuse"])
    builder.add_edge("refuse", END)
    return builder.compile(checkpointer=checkpointer, name="guardgraph")
