"""Run the chat model while the input guard decides; a blocked turn's draft is cancelled unseen.

The wrapped input guard node starts the turn's generation before it checks the user's message and
hands it to the chat node of the same turn through a :class:`SpeculationRegistry`; when the message
is blocked, the generation is cancelled and nothing it wrote is ever shown or stored.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import BaseMessage, SystemMessage
from langgraph.runtime import Runtime

from guardgraph.nodes.context import Context, run_context, thread_id
from guardgraph.nodes.state import GuardedChatState, Node, StateUpdate
from guardgraph.nodes.streaming.generation import BackgroundGeneration


def chat_messages(state: GuardedChatState, system_prompt: str | None) -> list[BaseMessage]:
    """What the chat model is given: the app's system prompt, then the conversation."""
    messages: list[BaseMessage] = list(state["messages"])
    return [SystemMessage(system_prompt), *messages] if system_prompt else messages


def system_prompt_for(context: Context, default: str | None) -> str | None:
    """The run's system prompt where it sets one, else the graph's."""
    return default if context.system_prompt is None else context.system_prompt


def turn_key(state: GuardedChatState, runtime: Runtime[Context]) -> str:
    """Identifies one turn: the thread and the id of the user message that started it."""
    last = state["messages"][-1] if state.get("messages") else None
    return f"{thread_id(runtime) or ''}:{getattr(last, 'id', None) or id(last)}"


@dataclass
class SpeculationRegistry:
    """Hands a generation started by the input guard to the chat node of the same turn."""

    max_age_s: float = 600.0
    _running: dict[str, BackgroundGeneration] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self, key: str, model: BaseChatModel, messages: Sequence[BaseMessage]) -> BackgroundGeneration:
        generation = BackgroundGeneration(model, messages)
        with self._lock:
            self._expire()
            previous = self._running.pop(key, None)
            self._running[key] = generation
        if previous is not None:
            previous.cancel()
        return generation

    def take(self, key: str) -> BackgroundGeneration | None:
        with self._lock:
            return self._running.pop(key, None)

    def cancel(self, key: str) -> None:
        generation = self.take(key)
        if generation is not None:
            generation.cancel()

    def _expire(self) -> None:
        now = time.perf_counter()
        for key in [k for k, g in self._running.items() if now - g.started_at > self.max_age_s]:
            self._running.pop(key).cancel()


def speculative(
    input_guard_node: Node, model: BaseChatModel, system_prompt: str | None, registry: SpeculationRegistry
) -> Node:
    """Wrap the input guard node so generation starts before the check and is cancelled if it blocks."""

    def input_guard(state: GuardedChatState, runtime: Runtime[Context]) -> StateUpdate:
        key = turn_key(state, runtime)
        prompt = system_prompt_for(run_context(runtime), system_prompt)
        registry.start(key, model, chat_messages(state, prompt))
        try:
            update = input_guard_node(state, runtime=runtime)
        except BaseException:
            registry.cancel(key)
            raise
        if update.get("blocked", True):
            registry.cancel(key)
        return update

    return input_guard
