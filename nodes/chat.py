"""The chat node: the chat model writes a draft reply, released to the user only as it passes the guard.

The draft goes to ``state['draft']``; only the output guard node moves it into ``messages``. When the
graph is streamed with ``stream_mode="custom"``, text the output guard passed arrives as
``{"guardgraph": "token", "text": ...}`` events; nothing the output guard has not passed is ever
written to the stream. A run with ``Context(stream_tokens=False)`` skips the chunk checks: the output
guard node checks the complete draft once.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from langchain_core.language_models import BaseChatModel
from langgraph.runtime import Runtime

from guardgraph.nodes.checks.run import GuardSettings, check, warm_reply_check
from guardgraph.nodes.checks.verdict import Verdict
from guardgraph.nodes.context import Context, run_context, thread_id
from guardgraph.nodes.guard_node import run_settings
from guardgraph.nodes.guards.base import Guard
from guardgraph.nodes.speculation import SpeculationRegistry, WarmUp, chat_messages, system_prompt_for, turn_key
from guardgraph.nodes.state import GuardedChatState, Node, StateUpdate
from guardgraph.nodes.streaming.generation import BackgroundGeneration
from guardgraph.nodes.streaming.holdback import Chunking, release_guarded
from guardgraph.policies.model import Policy

TOKEN_EVENT = "token"


@dataclass
class ChatNodeDeps:
    """The chat model and, for hold-back streaming, the output guard that passes each chunk."""

    model: BaseChatModel
    output_guard: Guard
    policy: Policy
    output_settings: GuardSettings
    system_prompt: str | None = None
    registry: SpeculationRegistry = field(default_factory=SpeculationRegistry)
    chunking: Chunking = field(default_factory=Chunking)


def make_chat_node(deps: ChatNodeDeps) -> Node:
    def chat(state: GuardedChatState, runtime: Runtime[Context]) -> StateUpdate:
        context = run_context(runtime)
        policy = context.resolve_policy(deps.policy)
        settings = run_settings(deps.output_settings, context)
        prompt = system_prompt_for(context, deps.system_prompt)
        speculation = deps.registry.take(turn_key(state, runtime))
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
                return {"draft": "".join(generation.tokens()), "error": None}
            if speculation is not None:
                speculation.warmed(settings.timeout_s)
            result = release_guarded(
                generation.pieces(),
                check_reply,
                lambda text: runtime.stream_writer({"guardgraph": TOKEN_EVENT, "text": text}),
                deps.chunking,
            )
        except Exception as error:  # the turn ends with a clear message; the history stays as it was
            return {"draft": None, "error": chat_error_message(error)}
        finally:
            generation.cancel()
        return {"draft": result.draft, "error": None}

    return chat


def make_reply_warmup(deps: ChatNodeDeps) -> WarmUp:
    """The output guard's warm-up for a turn's reply checks (run beside the input check, ``speculation.py``)."""

    def warm(state: GuardedChatState, runtime: Runtime[Context]) -> None:
        policy = run_context(runtime).resolve_policy(deps.policy)
        warm_reply_check(deps.output_guard, state["messages"], policy, deps.output_settings)

    return warm


def chat_error_message(error: BaseException) -> str:
    """One readable line for a chat model failure."""
    detail = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"the chat model failed ({type(error).__name__}{': ' + detail if detail else ''}); nothing was saved"
