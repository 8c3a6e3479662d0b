"""Scripted fakes for tests: guards and backends that answer what the test says."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from pydantic import Field

from guardgraph.nodes.checks.request import GuardRequest
from guardgraph.nodes.checks.verdict import Verdict
from guardgraph.nodes.guards.base import BaseGuard, Guard
from guardgraph.nodes.guards.llama_guard.formats import GuardFormat
from guardgraph.nodes.guards.llama_guard.guard import Completion, GuardPrompt, LlamaGuard


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


class ScriptedChatModel(BaseChatModel):
    """Streams the next scripted reply piece by piece, logging what happened; ``fail`` raises instead."""

    replies: list[list[str]]
    delay_s: float = 0.0
    fail: bool = False
    log: list[tuple[str, float, str]] = Field(default_factory=list)  # (event, time, detail)

    @property
    def _llm_type(self) -> str:
        return "scripted"

    def _next_reply(self) -> list[str]:
        if self.fail:
            raise RuntimeError("model server crashed")
        return self.replies.pop(0)

    def _generate(
        self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kwargs: Any
    ) -> ChatResult:
        return ChatResult(generations=[ChatGeneration(message=AIMessage("".join(self._next_reply())))])

    def _stream(
        self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kwargs: Any
    ) -> Iterator[ChatGenerationChunk]:
        self.log.append(("start", time.perf_counter(), ""))
        pieces = self._next_reply()
        try:
            for piece in pieces:
                time.sleep(self.delay_s)
                self.log.append(("piece", time.perf_counter(), piece))
                yield ChatGenerationChunk(message=AIMessageChunk(content=piece))
        finally:
            self.log.append(("stop", time.perf_counter(), ""))


class SlowGuard(BaseGuard):
    """Wraps a guard and sleeps before each check (to show work overlapping it)."""

    def __init__(self, guard: Guard, delay_s: float, log: list[tuple[str, float, str]] | None = None) -> None:
        self.guard, self.delay_s, self.log = guard, delay_s, log if log is not None else []
        self.name = guard.name

    def _check_batch(self, requests: Sequence[GuardRequest]) -> list[Verdict]:
        self.log.append(("guard-start", time.perf_counter(), requests[0].checked_text))
        time.sleep(self.delay_s)
        verdicts = self.guard.check_batch(requests)
        self.log.append(("guard-end", time.perf_counter(), verdicts[0].outcome.value))
        return verdicts
