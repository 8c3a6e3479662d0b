"""Scripted fakes for tests: guards and backends that answer what the test says."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from nodes.conversation import GuardRequest
from nodes.formats import GuardFormat
from nodes.guards.base import BaseGuard
from nodes.guards.llama_guard import Completion, GuardPrompt, LlamaGuard
from nodes.verdict import Verdict


class ScriptedBackend:
    """A completion backend that replies with ``answer(prompt_text)``, recording every prompt it saw."""

    name = "scripted"

    def __init__(self, answer: Callable[[str], str] | str = "safe") -> None:
        self.answer = answer if callable(answer) else (lambda _prompt, text=answer: text)
        self.prompts: list[str] = []

    def complete(self, prompts: Sequence[GuardPrompt], fmt: GuardFormat) -> list[Completion]:
        self.prompts.extend(p.text for p in prompts)
        return [Completion(self.answer(p.text)) for p in prompts]


def scripted_llama_guard(answer: Callable[[str], str] | str = "safe", fmt: str = "llama-guard-3") -> LlamaGuard:
    """A Llama Guard whose model output is scripted; the prompts go through the real renderer and parser."""
    return LlamaGuard(ScriptedBackend(answer), fmt)


def keyword_answer(*unsafe_words: str, codes: str = "S1") -> Callable[[str], str]:
    """``unsafe\\n{codes}`` when the checked (last) turn contains one of the words, else ``safe``."""

    def answer(prompt: str) -> str:
        conversation = prompt.split("<BEGIN CONVERSATION>", 1)[1].split("<END CONVERSATION>", 1)[0]
        last_turn = conversation.strip().split("\n\n")[-1].lower()
        return f"unsafe\n{codes}" if any(w in last_turn for w in unsafe_words) else "safe"

    return answer


class RaisingGuard(BaseGuard):
    name = "raising"

    def _check_batch(self, requests: Sequence[GuardRequest]) -> list[Verdict]:
        raise ConnectionError("guard server unreachable")
