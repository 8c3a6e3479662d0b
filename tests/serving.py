"""Deterministic models for the server, embedding and worker tests: an echoing chat model, scripted guards.

``make_deps`` is what ``GUARDGRAPH_SERVER_FACTORY=tests.serving:make_deps`` serves: input messages
containing "bomb" are refused by the input guard, replies containing "secret" by the output guard,
everything else is answered with ``You said: <message>``. The guard settings (audit log, shadow, ...)
come from the same ``GUARDGRAPH_*`` variables a real deployment reads; ``GUARDGRAPH_TEST_CHAT_DELAY_S``
makes every reply take that long and ``GUARDGRAPH_TEST_CHAT_STARTED`` names a file created when the
chat model is first called (a test's sign that a turn is under way).

``python -m tests.serving ask ...`` runs the real ``guardgraph`` command with these models in place of
the offline ones: what a user's process does, without loading models.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult

from guardgraph.graph.builder import GuardedChatDeps
from guardgraph.graph.models.deps import guard_settings
from guardgraph.graph.server import config_from_env
from guardgraph.nodes.guards.llama_guard.guard import LlamaGuard
from guardgraph.policies import load_policy
from tests.fakes import keyword_answer, scripted_llama_guard

DELAY_ENV = "GUARDGRAPH_TEST_CHAT_DELAY_S"
STARTED_ENV = "GUARDGRAPH_TEST_CHAT_STARTED"


class EchoChatModel(BaseChatModel):
    """Replies ``You said: <last message>`` after ``delay_s``; counts its calls; touches ``started`` when called."""

    calls: int = 0
    delay_s: float = 0.0
    started: str | None = None

    @property
    def _llm_type(self) -> str:
        return "echo"

    def _generate(
        self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kw: Any
    ) -> ChatResult:
        self.calls += 1
        if self.started:
            Path(self.started).touch()
        time.sleep(self.delay_s)
        return ChatResult(generations=[ChatGeneration(message=AIMessage(f"You said: {messages[-1].content}"))])


AMAZON_CATEGORY = "O7: Financial Information related to Amazon"


def input_answer(prompt: str) -> str:
    """S9 for bombs; O7 for Amazon, but only under a policy whose prompt lists that category (seed-custom)."""
    if AMAZON_CATEGORY in prompt and keyword_answer("amazon", codes="O7")(prompt) != "safe":
        return "unsafe\nO7"
    return keyword_answer("bomb", codes="S9")(prompt)


def input_guard() -> LlamaGuard:
    return scripted_llama_guard(input_answer)


def output_guard() -> LlamaGuard:
    return scripted_llama_guard(keyword_answer("secret", codes="S7"))


def chat_model_from_env() -> EchoChatModel:
    return EchoChatModel(delay_s=float(os.environ.get(DELAY_ENV, "0")), started=os.environ.get(STARTED_ENV))


def make_deps() -> GuardedChatDeps:
    """The server's dependencies under the Llama Guard 3 policy (loaded here: the server calls this outside pytest)."""
    settings = guard_settings(config_from_env())
    return GuardedChatDeps(
        chat_model=chat_model_from_env(),
        input_guard=input_guard(),
        output_guard=output_guard(),
        policy=load_policy("llama-guard-3"),
        input_settings=settings,
        output_settings=settings,
        system_prompt=None,
    )


def main() -> None:
    """The ``guardgraph`` command, with the echoing chat model and the input guard's script as its models."""
    import guardgraph.graph.models.deps as deps
    from guardgraph.graph.cli.app import main as cli_main
    from guardgraph.graph.models.guards import GUARD_BACKENDS

    deps.chat_model_for = lambda config: chat_model_from_env()
    GUARD_BACKENDS["offline"] = lambda config, policy: input_guard()
    cli_main()


if __name__ == "__main__":
    main()
