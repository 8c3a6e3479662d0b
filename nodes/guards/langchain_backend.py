"""Llama Guard behind any LangChain model: an OpenAI-compatible server (vLLM, llama.cpp, TGI), Ollama..."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from langchain_core.language_models import BaseChatModel, BaseLanguageModel
from langchain_core.messages import BaseMessage, HumanMessage

from nodes.formats import GuardFormat
from nodes.guards.llama_guard import Completion, GuardPrompt


def _text_of(output: Any) -> str:
    if isinstance(output, BaseMessage):
        content = output.content
        if isinstance(content, list):
            return "".join(part.get("text", "") if isinstance(part, dict) else str(part) for part in content)
        return str(content)
    return str(output)


class LangChainBackend:
    """Sends the rendered prompt as-is to a completion LLM, or as one user message to a chat model.

    A completion endpoint (``/v1/completions``) sees the exact prompt bytes, which is what custom
    policies need; a chat endpoint re-wraps the text in the server's own template.
    """

    def __init__(self, model: BaseLanguageModel, name: str | None = None) -> None:
        self.model = model
        self.name = name or type(model).__name__

    def complete(self, prompts: Sequence[GuardPrompt], fmt: GuardFormat) -> list[Completion]:
        inputs: list[Any]
        if isinstance(self.model, BaseChatModel):
            inputs = [[HumanMessage(prompt.text)] for prompt in prompts]
        else:
            inputs = [prompt.text for prompt in prompts]
        outputs = self.model.batch(inputs, return_exceptions=False)
        return [Completion(_text_of(output)) for output in outputs]
