"""Llama Guard behind any LangChain model: an OpenAI-compatible server (vLLM, llama.cpp, TGI), Ollama..."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

from langchain_core.language_models import BaseChatModel, BaseLanguageModel, BaseLLM, LanguageModelInput
from langchain_core.messages import BaseMessage, HumanMessage

from guardgraph.nodes.checks.request import content_text
from guardgraph.nodes.guards.llama_guard.formats import GuardFormat
from guardgraph.nodes.guards.llama_guard.guard import Completion, GuardPrompt
from guardgraph.nodes.guards.llama_guard.openai_backend import p_unsafe_from_logprobs, strip_bos


def _text_of(output: Any) -> str:
    """A chat model's message content or an LLM's string, as text."""
    return content_text(output.content) if isinstance(output, BaseMessage) else str(output)


def _chat_logprobs(metadata: dict[str, Any]) -> dict[str, Any] | None:
    """A chat reply's ``logprobs`` (``{"content": [...]}``) in the completions ``logprobs`` shape."""
    content = (metadata.get("logprobs") or {}).get("content") if isinstance(metadata, dict) else None
    if not content:
        return None
    return {
        "tokens": [item.get("token") for item in content],
        "token_logprobs": [item.get("logprob") for item in content],
        "top_logprobs": [{t["token"]: t["logprob"] for t in item.get("top_logprobs") or []} for item in content],
    }


class LangChainBackend:
    """Sends the rendered prompt as-is to a completion LLM, or as one user message to a chat model.

    A completion endpoint (``/v1/completions``, Ollama's raw ``/api/generate``) sees the exact prompt
    bytes, which is what custom policies need; a chat endpoint re-wraps the text in the server's own
    template. ``call_kwargs`` go with every call (``{"raw": True}`` for ``langchain_ollama.OllamaLLM``);
    ``bos="strip"`` drops the prompt's leading beginning-of-text token for servers that add their own.
    When the model returns logprobs (``langchain_openai.OpenAI(logprobs=20)``, ``ChatOpenAI(logprobs=True,
    top_logprobs=20)``), P(unsafe) is read at the verdict position (see ``openai_backend.py``).
    """

    def __init__(
        self,
        model: BaseLanguageModel,
        name: str | None = None,
        *,
        call_kwargs: Mapping[str, Any] | None = None,
        bos: Literal["strip", "keep"] = "keep",
    ) -> None:
        self.model = model
        self.name = name or type(model).__name__
        self.call_kwargs = dict(call_kwargs or {})
        self.bos = bos
        # A chat model wraps the text in its own template: it cannot be asked to continue a prompt.
        self.continues_prompts = not isinstance(model, BaseChatModel)

    def prompt_text(self, prompt: GuardPrompt) -> str:
        return strip_bos(prompt.text) if self.bos == "strip" else prompt.text

    def complete(self, prompts: Sequence[GuardPrompt], fmt: GuardFormat) -> list[Completion]:
        texts = [self.prompt_text(prompt) for prompt in prompts]
        if isinstance(self.model, BaseChatModel):
            conversations: list[LanguageModelInput] = [[HumanMessage(text)] for text in texts]
            outputs = self.model.batch(conversations, **self.call_kwargs)
            return [
                Completion(_text_of(output), p_unsafe_from_logprobs(_chat_logprobs(output.response_metadata)))
                for output in outputs
            ]
        if isinstance(self.model, BaseLLM):
            result = self.model.generate(texts, **self.call_kwargs)
            completions = []
            for generations in result.generations:
                info = generations[0].generation_info or {}
                completions.append(Completion(generations[0].text, p_unsafe_from_logprobs(info.get("logprobs"))))
            return completions
        plain: list[LanguageModelInput] = list(texts)
        outputs = self.model.batch(plain, **self.call_kwargs)
        return [Completion(_text_of(output)) for output in outputs]
