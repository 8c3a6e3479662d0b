"""The chat node: the chat model writes a draft reply, released to the user only as it passes the guard.

The draft goes to the output guard node through the turn's draft handoff (``handoff.py``), never through
the state; only the output guard node turns it into a message. When the graph is streamed with
``stream_mode="custom"``, text the output guard passed arrives as ``{"guardgraph": "token", "text": ...}``
events; nothing the output guard has not passed is ever written to the stream. A run with
``Context(stream_tokens=False)`` skips the chunk checks: the output guard node checks the complete draft
once.

A chat model that fails, or a reply that is stopped (:func:`~guardgraph.nodes.streaming.generation.
cancel_generations`), ends the turn without a reply and removes the turn's user message: the thread is
as it was before the turn (``state.thread_messages``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import BaseMessage, RemoveMessage
from langgraph.runtime import Runtime

from guardgraph.nodes.checks.run import GuardSettings, check, error_reason, warm_reply_check
from guardgraph.nodes.checks.verdict import Verdict
from guardgraph.nodes.context import Context, run_context, thread_id
from guardgraph.nodes.guard_node import run_settings
from guardgraph.nodes.guards.base import Guard
from guardgraph.nodes.handoff import Draft, Handoff
from guardgraph.nodes.speculation import (
    Speculation,
    WarmUp,
    chat_messages,
    speculation_handoff,
    system_prompt_for,
    turn_key,
)
from guardgraph.nodes.state import GuardedChatState, Node, StateUpdate, unanswered
from guardgraph.nodes.streaming.generation import BackgroundGeneration, GenerationCancelled
from guardgraph.nodes.streaming.holdback import Chunking, release_guarded
from guardgraph.policies.model import Policy

TOKEN_EVENT = "token"
STOPPED = "the reply was stopped; nothing was saved"


@dataclass
class ChatNodeDeps:
    """The chat model, the output guard that passes each streamed chunk, and the turn's handoffs."""

    model: BaseChatModel
    output_guard: Guard
    policy: Policy
    output_settings: GuardSettings
    system_prompt: str | None = None
    speculations: Handoff[Speculation] = field(default_factory=speculation_handoff)
    drafts: Handoff[Draft] = field(default_factory=Handoff)
    chunking: Chunking = field(default_factory=Chunking)


def make_chat_node(deps: ChatNodeDeps) -> Node:
    def chat(state: GuardedChatState, runtime: Runtime[Context]) -> StateUpdate:
        context = run_context(runtime)
        policy = context.resolve_policy(deps.policy)
        settings = run_settings(deps.output_settings, context)
        prompt = system_prompt_for(context, deps.system_prompt)
        key = turn_key(state, runtime)
        speculation = deps.speculations.take(key)
        generation = (
            speculation.generation if speculation else BackgroundGeneration(deps.model, chat_messages(state, prompt))
        )

        def check_reply(reply: str) -> Verdict:
            return check(
                deps.output_guard,
                "Agent",
                state["messages"],
                policy,
                settings,
                reply=reply,
                thread_id=thread_id(runtime),
            )

        try:
            if not context.stream_tokens:
                draft = Draft("".join(generation.tokens()))
            else:
                if speculation is not None:
                    speculation.warmed(settings.timeout_s)
                result = release_guarded(
                    generation.pieces(),
                    check_reply,
                    lambda text: runtime.stream_writer({"guardgraph": TOKEN_EVENT, "text": text}),
                    deps.chunking,
                )
                draft = Draft(result.draft, result.verdict)
        except Exception as error:  # the turn ends with a clear message; the thread is as before the turn
            return turn_failed(state, STOPPED if isinstance(error, GenerationCancelled) else chat_error_message(error))
        finally:
            generation.cancel()
        deps.drafts.put(key, draft)
        return {"error": None}

    return chat


def make_reply_warmup(deps: ChatNodeDeps) -> WarmUp:
    """The output guard's warm-up for a turn's reply checks (run beside the input check, ``speculation.py``)."""

    def warm(state: GuardedChatState, runtime: Runtime[Context]) -> None:
        policy = run_context(runtime).resolve_policy(deps.policy)
        warm_reply_check(deps.output_guard, state["messages"], policy, deps.output_settings)

    return warm


def turn_failed(state: GuardedChatState, error: str) -> StateUpdate:
    """End the turn without a reply: its user message is removed, so the thread is as it was before."""
    removed: list[BaseMessage] = [RemoveMessage(id=m.id) for m in unanswered(state["messages"]) if m.id]
    return {"messages": removed, "error": error}


def chat_error_message(error: BaseException) -> str:
    """One readable line for a chat model failure."""
    return f"the chat model failed ({error_reason(error)}); nothing was saved"
