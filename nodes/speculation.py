"""Run the chat model while the input guard decides; a blocked turn's draft is cancelled unseen."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import BaseMessage, SystemMessage
from langchain_core.runnables import RunnableConfig

from guardgraph.nodes.guard_node import thread_of
from guardgraph.nodes.streaming.generation import SpeculationRegistry

Node = Callable[[dict[str, Any], RunnableConfig], dict[str, Any]]


def chat_messages(state: dict[str, Any], system_prompt: str | None) -> list[BaseMessage]:
    """What the chat model is given: the app's system prompt, then the conversation."""
    messages: list[BaseMessage] = list(state["messages"])
    return [SystemMessage(system_prompt), *messages] if system_prompt else messages


def turn_key(state: dict[str, Any], config: RunnableConfig | None) -> str:
    """Identifies one turn: the thread and the id of the user message that started it."""
    thread = thread_of(config) or ""
    last = state["messages"][-1] if state.get("messages") else None
    return f"{thread}:{getattr(last, 'id', None) or id(last)}"


def speculative(
    input_guard_node: Node, model: BaseChatModel, system_prompt: str | None, registry: SpeculationRegistry
) -> Callable[[dict[str, Any], RunnableConfig], dict[str, Any]]:
    """Wrap the input guard node so generation starts before the check and is cancelled if it blocks."""

    def input_guard(state: dict[str, Any], config: RunnableConfig) -> dict[str, Any]:
        key = turn_key(state, config)
        registry.start(key, model, chat_messages(state, system_prompt))
        try:
            update = input_guard_node(state, config)
        except BaseException:
            registry.cancel(key)
            raise
        if update.get("blocked", True):
            registry.cancel(key)
        return update

    return input_guard
