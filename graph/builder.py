"""Wire the guarded chat graph: START → input_guard → chat → output_guard → END, unsafe → refuse.

The input guard starts the chat model speculatively (cancelled if it blocks); the chat node releases
tokens only as the output guard passes them; the output guard node makes the final decision.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from langchain_core.language_models import BaseChatModel
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph

from guardgraph.nodes.chat import ChatNodeDeps, make_chat_node
from guardgraph.nodes.guard_node import GuardNodeSettings, make_guard_node
from guardgraph.nodes.guards.base import Guard
from guardgraph.nodes.guards.recent import RecentVerdicts
from guardgraph.nodes.refuse import make_refuse_node
from guardgraph.nodes.speculation import speculative
from guardgraph.nodes.state import GuardedChatState
from guardgraph.nodes.streaming.generation import SpeculationRegistry
from guardgraph.nodes.streaming.holdback import Chunking
from guardgraph.policies.model import Policy


@dataclass
class GuardedChatDeps:
    """Everything the nodes need, injected: the server, the CLI, tests and notebooks build the same graph."""

    chat_model: BaseChatModel
    input_guard: Guard
    output_guard: Guard
    policy: Policy
    input_settings: GuardNodeSettings = field(default_factory=GuardNodeSettings)
    output_settings: GuardNodeSettings = field(default_factory=GuardNodeSettings)
    system_prompt: str | None = None
    speculate: bool = True
    chunking: Chunking = field(default_factory=Chunking)


def _route(next_node: str) -> Any:
    def route(state: GuardedChatState) -> str:
        return "refuse" if state.get("blocked", True) else next_node

    return route


def _after_chat(state: GuardedChatState) -> str:
    return END if state.get("error") else "output_guard"


def build_graph(deps: GuardedChatDeps, checkpointer: BaseCheckpointSaver | None = None) -> CompiledStateGraph:
    """Compile the guarded chat graph; pass a checkpointer to keep conversations by thread id."""
    registry = SpeculationRegistry()
    output_guard = RecentVerdicts(deps.output_guard)
    input_guard = make_guard_node("User", deps.input_guard, deps.policy, deps.input_settings)
    if deps.speculate:
        input_guard = speculative(input_guard, deps.chat_model, deps.system_prompt, registry)
    chat_deps = ChatNodeDeps(
        deps.chat_model, output_guard, deps.policy, deps.output_settings, deps.system_prompt, registry, deps.chunking
    )
    # Nodes are plain functions over the state dict; Any keeps langgraph's TypedDict-bound overloads quiet.
    nodes: dict[str, Any] = {
        "input_guard": input_guard,
        "chat": make_chat_node(chat_deps),
        "output_guard": make_guard_node("Agent", output_guard, deps.policy, deps.output_settings),
        "refuse": make_refuse_node(deps.policy),
    }

    builder = StateGraph(GuardedChatState)
    for name, node in nodes.items():
        builder.add_node(name, node)

    builder.add_edge(START, "input_guard")
    builder.add_conditional_edges("input_guard", _route("chat"), ["chat", "refuse"])
    builder.add_conditional_edges("chat", _after_chat, ["output_guard", END])
    builder.add_conditional_edges("output_guard", _route(END), [END, "refuse"])
    builder.add_edge("refuse", END)
    return builder.compile(checkpointer=checkpointer, name="guardgraph")
