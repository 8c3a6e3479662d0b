"""Run the chat model while the input guard decides; a blocked turn's draft is cancelled unseen.

The wrapped input guard node starts the turn's generation before it checks the user's message and
hands it to the chat node of the same turn through a :class:`SpeculationRegistry`; when the message
is blocked, the generation is cancelled and nothing it wrote is ever shown or stored. Beside it, an
output guard that is not the input guard warms up for the reply (``nodes/chat.py:make_reply_warmup``,
``GuardedChatDeps.warm_output_guard``): the conversation part of every reply check is known before the
chat model writes anything, so it is computed while the input guard and the chat model's prefill run,
and the first chunk's check pays only the chunk and the tail.
"""

from __future__ import annotations

import contextvars
import threading
import time
from collections.abc import Callable, Sequence
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


WarmUp = Callable[[GuardedChatState, Runtime[Context]], None]
"""Work for a turn's reply checks that can start before the reply exists."""


@dataclass
class Speculation:
    """What a turn started before its input check decided: the generation and the output guard's warm-up."""

    generation: BackgroundGeneration
    warmup: threading.Thread | None = None

    def warmed(self, timeout_s: float | None) -> None:
        """Wait (at most ``timeout_s``) for the warm-up, so that the first reply check reuses it, not races it."""
        if self.warmup is not None:
            self.warmup.join(timeout_s)

    def cancel(self) -> None:
        self.generation.cancel()


@dataclass
class SpeculationRegistry:
    """Hands a generation (and warm-up) started by the input guard to the chat node of the same turn."""

    max_age_s: float = 600.0
    _running: dict[str, Speculation] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(
        self,
        key: str,
        model: BaseChatModel,
        messages: Sequence[BaseMessage],
        warmup: Callable[[], None] | None = None,
    ) -> Speculation:
        speculation = Speculation(BackgroundGeneration(model, messages))
        if warmup is not None:
            context = contextvars.copy_context()
            speculation.warmup = threading.Thread(
                target=context.run, args=(warmup,), name="guardgraph-warmup", daemon=True
            )
            speculation.warmup.start()
        with self._lock:
            self._expire()
            previous = self._running.pop(key, None)
            self._running[key] = speculation
        if previous is not None:
            previous.cancel()
        return speculation

    def take(self, key: str) -> Speculation | None:
        with self._lock:
            return self._running.pop(key, None)

    def cancel(self, key: str) -> None:
        speculation = self.take(key)
        if speculation is not None:
            speculation.cancel()

    def _expire(self) -> None:
        now = time.perf_counter()
        for key in [k for k, s in self._running.items() if now - s.generation.started_at > self.max_age_s]:
            self._running.pop(key).cancel()


def speculative(
    input_guard_node: Node,
    model: BaseChatModel,
    system_prompt: str | None,
    registry: SpeculationRegistry,
    warm_reply: WarmUp | None = None,
) -> Node:
    """Wrap the input guard node so generation (and ``warm_reply``) start before the check; a block cancels them."""

    def input_guard(state: GuardedChatState, runtime: Runtime[Context]) -> StateUpdate:
        key = turn_key(state, runtime)
        prompt = system_prompt_for(run_context(runtime), system_prompt)
        warmup = None if warm_reply is None else (lambda: warm_reply(state, runtime))
        registry.start(key, model, chat_messages(state, prompt), warmup)
        try:
            update = input_guard_node(state, runtime=runtime)
        except BaseException:
            registry.cancel(key)
            raise
        if update.get("blocked", True):
            registry.cancel(key)
        return update

    return input_guard
