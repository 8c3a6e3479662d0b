"""Llama Guard behind an OpenAI-compatible ``/v1/completions`` endpoint (vLLM, llama.cpp server, TGI).

The exact rendered prompt is sent as a raw completion (a chat endpoint would re-wrap it in the
server's own template), greedily, with ``logprobs`` so that P(unsafe) can be read at the verdict
position: the first generated token that is not whitespace; its top-k alternatives are searched for
the ``safe``/``unsafe`` tokens (or their first pieces) and P(unsafe) is the softmax over those two,
the same score the transformers backend computes. A server that returns no logprobs gives score None.

Beginning-of-text: Llama Guard 3/4 prompts start with ``<|begin_of_text|>`` and servers add their own
BOS to a completion prompt, so the model would see two. ``bos="strip"`` (default, works with every
server) drops the prompt's leading BOS and lets the server add it; ``bos="keep"`` sends the prompt
unchanged, for a server told not to add one: vLLM accepts ``extra_body={"add_special_tokens": False}``
(see :data:`VLLM_EXTRA_BODY`). Only fields in ``extra_body`` beyond the standard ones are sent, so
nothing a server would reject goes out by default.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

from guardgraph.nodes import defaults
from guardgraph.nodes.guards.llama_guard.formats import GuardFormat
from guardgraph.nodes.guards.llama_guard.guard import Completion, GuardPrompt

BOS_TOKENS = ("<|begin_of_text|>", "<s>")
VLLM_EXTRA_BODY: dict[str, Any] = {"add_special_tokens": False}
VERDICT_WORDS = ("safe", "unsafe")


def strip_bos(text: str) -> str:
    """``text`` without one leading beginning-of-text token."""
    for bos in BOS_TOKENS:
        if text.startswith(bos):
            return text[len(bos) :]
    return text


def _side(token: str) -> str | None:
    """Which verdict word ``token`` starts: ``safe``, ``unsafe``, or None (ambiguous or neither).

    Llama Guard writes the words in lower case; a piece must be at least two characters (``sa``, ``un``)
    so that single letters (the ``S`` of a category code) do not count.
    """
    piece = token.strip()
    if len(piece) < 2:
        return None
    is_safe = "safe".startswith(piece)
    is_unsafe = "unsafe".startswith(piece)
    if is_safe == is_unsafe:
        return None
    return "safe" if is_safe else "unsafe"


def p_unsafe_from_top_logprobs(top: Mapping[str, float]) -> float | None:
    """P(unsafe) from one position's top-k ``{token: logprob}``; None when neither word is listed.

    Every listed token that starts ``safe`` (``safe``, `` safe``, ``sa``...) or ``unsafe`` (``unsafe``,
    ``un``...) adds its probability to that side; a side with no listed token counts as zero.
    """
    mass = {"safe": 0.0, "unsafe": 0.0}
    for token, logprob in top.items():
        side = _side(token)
        if side is not None and logprob is not None and math.isfinite(logprob):
            mass[side] += math.exp(logprob)
    total = mass["safe"] + mass["unsafe"]
    return mass["unsafe"] / total if total > 0 else None


def p_unsafe_from_logprobs(logprobs: Any) -> float | None:
    """P(unsafe) at the verdict position of an OpenAI completions ``logprobs`` object (or its dict)."""
    if logprobs is None:
        return None
    data = logprobs if isinstance(logprobs, Mapping) else _as_dict(logprobs)
    tokens = data.get("tokens") or []
    tops = data.get("top_logprobs") or []
    for index, token in enumerate(tokens):
        if token is None or not str(token).strip():
            continue  # the verdict lead ("\n\n" for Llama Guard 3/4) and other whitespace
        top = dict(tops[index]) if index < len(tops) and tops[index] else {}
        chosen = (data.get("token_logprobs") or [None] * len(tokens))[index]
        if token not in top and chosen is not None:
            top[token] = chosen
        return p_unsafe_from_top_logprobs(top)
    return None


def _as_dict(obj: Any) -> dict[str, Any]:
    if hasattr(obj, "model_dump"):
        return obj.model_dump()
    return dict(vars(obj))


class OpenAICompletionBackend:
    """A ``CompletionBackend`` over an OpenAI-compatible completions endpoint.

    ``top_logprobs`` is the ``logprobs`` request field (top-k alternatives per position; 0 or None to
    not ask: some servers cap it, OpenAI's legacy API at 5, vLLM at 20 by default). Prompts of one
    batch are sent as concurrent single-prompt requests (llama.cpp's server takes one prompt a request).
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        *,
        max_tokens: int = 20,
        top_logprobs: int | None = 20,
        bos: Literal["strip", "keep"] = "strip",
        extra_body: Mapping[str, Any] | None = None,
        timeout_s: float = defaults.GUARD_TIMEOUT_S,
        max_concurrency: int = 4,
        client: Any = None,
    ) -> None:
        if client is None:
            from openai import OpenAI

            client = OpenAI(base_url=base_url, api_key=api_key or "EMPTY", timeout=timeout_s, max_retries=0)
        self.client = client
        self.model = model
        self.name = f"openai:{model}"
        self.max_tokens = max_tokens
        self.top_logprobs = top_logprobs or None
        self.bos = bos
        self.extra_body = dict(extra_body or {})
        self.max_concurrency = max(1, max_concurrency)

    def prompt_text(self, prompt: GuardPrompt) -> str:
        return strip_bos(prompt.text) if self.bos == "strip" else prompt.text

    def _complete_one(self, prompt: GuardPrompt) -> Completion:
        request: dict[str, Any] = {
            "model": self.model,
            "prompt": self.prompt_text(prompt),
            "max_tokens": self.max_tokens,
            "temperature": 0,
        }
        if self.top_logprobs:
            request["logprobs"] = self.top_logprobs
        if self.extra_body:
            request["extra_body"] = self.extra_body
        response = self.client.completions.create(**request)
        choice = response.choices[0]
        return Completion(choice.text or "", p_unsafe_from_logprobs(getattr(choice, "logprobs", None)))

    def complete(self, prompts: Sequence[GuardPrompt], fmt: GuardFormat) -> list[Completion]:
        if len(prompts) <= 1 or self.max_concurrency == 1:
            return [self._complete_one(p) for p in prompts]
        with ThreadPoolExecutor(max_workers=min(self.max_concurrency, len(prompts))) as pool:
            return list(pool.map(self._complete_one, prompts))
