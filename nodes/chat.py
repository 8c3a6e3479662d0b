"""The chat node: the injected chat model writes a draft reply, released to the user only as it passes the guard.

The draft goes to ``state['draft']``; only the output guard node moves it into ``messages`` (its check of
the complete draft is the stream's last check, remembered by ``RecentVerdicts``). When the
graph is streamed with ``stream_mode="custom"``, passed text arrives as ``{"guardgraph": "token", "text": ...}``
events; nothing the output guard has not passed is ever written to the stream.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.runnables import RunnableConfig
from langgraph.config import get_stream_writer

from guardgraph.nodes.checks.request import GuardRequest, Turn, turns_from_messages, window
from guardgraph.nodes.checks.verdict import Verdict
from guardgraph.nodes.guard_node import GuardNodeSettings, run_guard, thread_of
from guardgraph.nodes.guards.base import Guard
from guardgraph.nodes.speculation import chat_messages, turn_key
from guardgraph.nodes.streaming.generation import BackgroundGeneration, SpeculationRegistry
from guardgraph.nodes.streaming.holdback import Chunking, release_guarded
from guardgraph.policies.model import Policy

TOKEN_EVENT = "token"


@dataclass
class ChatNodeDeps:
    """The chat model and, for hold-back streaming, the output guard that passes each chunk."""

    model: BaseChatModel
    output_guard: Guard
    policy: Policy
    output_settings: GuardNodeSettings
    system_prompt: str | None = None
    registry: SpeculationRegistry = field(default_factory=SpeculationRegistry)
    chunking: Chunking = field(default_factory=Chunking)


def stream_tokens_requested(config: RunnableConfig | None) -> bool:
    """Chunk-by-chunk checks run unless the caller said it does not stream (``stream_tokens=False``)."""
    return bool(((config or {}).get("configurable") or {}).get("stream_tokens", True))


def make_chat_node(deps: ChatNodeDeps) -> Callable[[dict[str, Any], RunnableConfig], dict[str, Any]]:
    def chat(state: dict[str, Any], config: RunnableConfig) -> dict[str, Any]:
        generation = deps.registry.take(turn_key(state, config)) or BackgroundGeneration(
            deps.model, chat_messages(state, deps.system_prompt)
        )
        earlier = turns_from_messages(state["messages"])

        def check(reply: str) -> Verdict:
            turns = window((*earlier, Turn("assistant", reply)), deps.output_settings.window_turns)
            request = GuardRequest("Agent", turns, deps.policy)
            return run_guard(deps.output_guard, request, deps.output_settings, thread_of(config))

        try:
            if not stream_tokens_requested(config):
                return {"draft": "".join(generation.tokens()), "error": None}
            writer = get_stream_writer()
            result = release_guarded(
                generation.pieces(),
                check,
                lambda text: writer({"guardgraph": TOKEN_EVENT, "text": text}),
                deps.chunking,
            )
        except Exception as error:  # the turn ends with a clear message; the history stays as it was
            return {"draft": None, "error": chat_error_message(error)}
        finally:
            generation.cancel()
        return {"draft": result.draft, "error": None}

    return chat


def chat_error_message(error: BaseException) -> str:
    """One readable line for a chat model failure."""
    detail = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"the chat model failed ({type(error).__name__}{': ' + detail if detail else ''}); nothing was saved"
