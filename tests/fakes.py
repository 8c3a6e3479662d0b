"""Scripted fakes for tests: guards, completion backends and chat models that answer what the test says."""

from __future__ import annotations

import copy
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

Answer = Callable[[str], str] | str
"""What a scripted Llama Guard model writes: a fixed text, or a function of the rendered prompt."""

Log = list[tuple[str, float, str]]
"""Timed events shared by SlowGuard and ScriptedChatModel: (event, time.perf_counter(), detail)."""


class ScriptedBackend:
    """A completion backend that replies with ``answer(prompt_text)``, recording every prompt it saw."""

    name = "scripted"

    def __init__(self, answer: Answer = "safe") -> None:
        self.answer = answer if callable(answer) else (lambda _prompt, text=answer: text)
        self.prompts: list[str] = []

    def complete(self, prompts: Sequence[GuardPrompt], fmt: GuardFormat) -> list[Completion]:
        self.prompts.extend(p.text for p in prompts)
        return [Completion(self.answer(p.text)) for p in prompts]


def scripted_llama_guard(answer: Answer = "safe", fmt: str = "llama-guard-3") -> LlamaGuard:
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
    """A guard whose every check raises a fresh copy of ``error`` (by default: the guard server is down)."""

    name = "raising"

    def __init__(self, error: Exception | None = None) -> None:
        self.error = error if error is not None else ConnectionError("guard server unreachable")

    def _check_batch(self, requests: Sequence[GuardRequest]) -> list[Verdict]:
        raise copy.copy(self.error)


class SlowGuard(BaseGuard):
    """A slow guard server: sleeps ``delay_s`` before each check, then answers as ``guard`` does.

    ``guard`` is any guard, or an ``Answer`` for a ``scripted_llama_guard``. Every check appends
    ``("guard-start", time, checked text)`` and ``("guard-end", time, outcome)`` to ``log``, so a test
    can order the check against other work (a ``ScriptedChatModel`` sharing the same log). A warm-up
    (``warm``) takes ``warm_delay_s`` and appends ``("warm-start", time, the conversation before the
    reply)`` and ``("warm-end", time, "")``.
    """

    def __init__(
        self, guard: Guard | Answer = "safe", delay_s: float = 0.0, log: Log | None = None, warm_delay_s: float = 0.0
    ) -> None:
        self.guard: Guard = scripted_llama_guard(guard) if isinstance(guard, str) or callable(guard) else guard
        self.delay_s = delay_s
        self.warm_delay_s = warm_delay_s
        self.log: Log = log if log is not None else []
        self.name = self.guard.name

    def warm(self, request: GuardRequest) -> None:
        self.log.append(("warm-start", time.perf_counter(), " | ".join(t.text for t in request.turns[:-1])))
        time.sleep(self.warm_delay_s)
        self.log.append(("warm-end", time.perf_counter(), ""))

    def _check_batch(self, requests: Sequence[GuardRequest]) -> list[Verdict]:
        self.log.append(("guard-start", time.perf_counter(), requests[0].checked_text))
        time.sleep(self.delay_s)
        verdicts = self.guard.check_batch(requests)
        self.log.append(("guard-end", time.perf_counter(), verdicts[0].outcome.value))
        return verdicts


class ScriptedChatModel(BaseChatModel):
    """Answers with the next scripted reply, streamed piece by piece, logging what happened.

    Each reply is a list of pieces, ``delay_s`` apart when streamed. While ``fail`` is set every call
    raises a fresh copy of ``error`` instead (by default: the model server crashed).
    """

    replies: list[list[str]]
    delay_s: float = 0.0
    fail: bool = False
    error: Exception = Field(default_factory=lambda: RuntimeError("model server crashed"))
    log: Log = Field(default_factory=list)

    @property
    def _llm_type(self) -> str:
        return "scripted"

    def _next_reply(self) -> list[str]:
        if self.fail:
            raise copy.copy(self.error)
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


def unreachable_chat_model() -> ScriptedChatModel:
    """A ScriptedChatModel whose every call raises ``ConnectionError("chat server unreachable")``."""
    return ScriptedChatModel(replies=[], fail=True, error=ConnectionError("chat server unreachable"))
