"""Deterministic models for the server and embedding tests: an echoing chat model, scripted guards.

``make_deps`` is what ``GUARDGRAPH_SERVER_FACTORY=tests.serving:make_deps`` serves: input messages
containing "bomb" are refused by the input guard, replies containing "secret" by the output guard,
everything else is answered with ``You said: <message>``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult

from guardgraph.graph.builder import GuardedChatDeps
from guardgraph.nodes.checks.request import GuardRequest
from guardgraph.nodes.checks.verdict import Verdict
from guardgraph.nodes.guards.llama_guard.guard import LlamaGuard
from guardgraph.policies import load_policy
from tests.scripted import keyword_answer, scripted_llama_guard

POLICY = load_policy("llama-guard-3")


class EchoChatModel(BaseChatModel):
    """Replies ``You said: <last message>``; counts its calls."""

    calls: int = 0

    @property
    def _llm_type(self) -> str:
        return "echo"

    def _generate(
        self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kw: Any
    ) -> ChatResult:
        self.calls += 1
        return ChatResult(generations=[ChatGeneration(message=AIMessage(f"You said: {messages[-1].content}"))])


class SleepyGuard(LlamaGuard):
    """A scripted Llama Guard whose every check takes ``seconds`` (a slow guard server)."""

    def __init__(self, seconds: float, answer: Any = "safe") -> None:
        super().__init__(scripted_llama_guard(answer).backend, "llama-guard-3")
        self.seconds = seconds

    def _check_batch(self, requests: Sequence[GuardRequest]) -> list[Verdict]:
        time.sleep(self.seconds)
        return super()._check_batch(requests)


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


def make_deps() -> GuardedChatDeps:
    return GuardedChatDeps(
        chat_model=EchoChatModel(),
        input_guard=input_guard(),
        output_guard=output_guard(),
        policy=POLICY,
        system_prompt=None,
    )
