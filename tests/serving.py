"""Deterministic models for the server and embedding tests: an echoing chat model, scripted guards.

``make_deps`` is what ``GUARDGRAPH_SERVER_FACTORY=tests.serving:make_deps`` serves: input messages
containing "bomb" are refused by the input guard, replies containing "secret" by the output guard,
everything else is answered with ``You said: <message>``.
"""

from __future__ import annotations

from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult

from guardgraph.graph.builder import GuardedChatDeps
from guardgraph.nodes.guards.llama_guard.guard import LlamaGuard
from guardgraph.policies import load_policy
from tests.fakes import keyword_answer, scripted_llama_guard


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
    """The server's dependencies under the Llama Guard 3 policy (loaded here: the server calls this outside pytest)."""
    return GuardedChatDeps(
        chat_model=EchoChatModel(),
        input_guard=input_guard(),
        output_guard=output_guard(),
        policy=load_policy("llama-guard-3"),
        system_prompt=None,
    )
