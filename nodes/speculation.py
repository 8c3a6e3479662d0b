"""Run the chat model while the input guard decides; a blocked turn's draft is cancelled unseen.

The wrapped input guard node starts the turn's generation before it checks the user's message and
hands it to the chat node of the same turn through a :class:`~guardgraph.nodes.handoff.Handoff`; when the
message is blocked, the generation is cancelled and nothing it wrote is ever shown or stored. Beside it,
an output guard that is not the input guard warms up for the reply (``chat.py:make_reply_warmup``,
``GuardedChatDeps.warm_output_guard``): the conversation part of every reply check is known before the chat
model writes anything, so it is computed while the input guard and the chat model's prefill run, and the
first chunk's check pays only the chunk and the format's tail.
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable
from dataclasses import dataclass

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import BaseMessage, SystemMessage
from langgraph.runtime import Runtime

from guardgraph.nodes.context import Context, run_context, thread_id
from guardgraph.nodes.handoff import Handoff
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
    """What a turn starts before its input check decides: the generation and the output guard's warm-up."""

    generation: BackgroundGeneration
    warmup: threading.Thread | None = None

    def warmed(self, timeout_s: float | None) -> None:
        """Wait (at most ``timeout_s``) for the warm-up, so that the first reply check reuses it, not races it."""
        if self.warmup is not None:
            self.warmup.join(timeout_s)

    def cancel(self) -> None:
        self.generation.cancel()


def speculation_handoff() -> Handoff[Speculation]:
    """Where the input guard node leaves a turn's speculation for the chat node; one left untaken is cancelled."""
    return Handoff(on_drop=Speculation.cancel)


def speculative(
    input_guard_node: Node,
    model: BaseChatModel,
    system_prompt: str | None,
    speculations: Handoff[Speculation],
    warmup: WarmUp | None = None,
) -> Node:
    """Wrap the input guard node so generation (and the output guard's ``warmup``) starts before the check;
    the generation is cancelled if the check blocks."""

    def input_guard(state: GuardedChatState, runtime: Runtime[Context]) -> StateUpdate:
        key = turn_key(state, runtime)
        prompt = system_prompt_for(run_context(runtime), system_prompt)
        speculation = Speculation(BackgroundGeneration(model, chat_messages(state, prompt)))
        if warmup is not None:
            context = contextvars.copy_context()  # callbacks and tracing go along
            speculation.warmup = threading.Thread(
                target=context.run, args=(warmup, state, runtime), name="guardgraph-warmup", daemon=True
            )
            speculation.warmup.start()
        speculations.put(key, speculation)
        try:
            update = input_guard_node(state, runtime=runtime)
        except BaseException:
            speculations.drop(key)
            raise
        if update.get("blocked", True):
            speculations.drop(key)
        return update

    return input_guard
