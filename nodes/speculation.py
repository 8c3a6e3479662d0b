"""Run the chat model while the input guard decides; a blocked turn's draft is cancelled unseen.

The wrapped input guard node starts the turn's generation before it checks the user's message and
hands it to the chat node of the same turn through a :class:`~guardgraph.nodes.handoff.Handoff`; when the
message is blocked, the generation is cancelled and nothing it wrote is ever shown or stored.
"""

from __future__ import annotations

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


def generation_handoff() -> Handoff[BackgroundGeneration]:
    """Where the input guard node leaves a turn's generation for the chat node; one left untaken is cancelled."""
    return Handoff(on_drop=BackgroundGeneration.cancel)


def speculative(
    input_guard_node: Node, model: BaseChatModel, system_prompt: str | None, generations: Handoff[BackgroundGeneration]
) -> Node:
    """Wrap the input guard node so generation starts before the check and is cancelled if it blocks."""

    def input_guard(state: GuardedChatState, runtime: Runtime[Context]) -> StateUpdate:
        key = turn_key(state, runtime)
        prompt = system_prompt_for(run_context(runtime), system_prompt)
        generations.put(key, BackgroundGeneration(model, chat_messages(state, prompt)))
        try:
            update = input_guard_node(state, runtime=runtime)
        except BaseException:
            generations.drop(key)
            raise
        if update.get("blocked", True):
            generations.drop(key)
        return update

    return input_guard
