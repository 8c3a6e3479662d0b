"""Scripted fakes for tests: guards, completion backends, chat models and an OpenAI-compatible server on
loopback, all answering what the test says."""

from __future__ import annotations

import copy
import json
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
    can order the check against other work (a ``ScriptedChatModel`` sharing the same log).
    """

    def __init__(self, guard: Guard | Answer = "safe", delay_s: float = 0.0, log: Log | None = None) -> None:
        self.guard: Guard = scripted_llama_guard(guard) if isinstance(guard, str) or callable(guard) else guard
        self.delay_s = delay_s
        self.log: Log = log if log is not None else []
        self.name = self.guard.name

    def _check_batch(self, requests: Sequence[GuardRequest]) -> list[Verdict]:
        self.log.append(("guard-start", time.perf_counter(), requests[0].checked_text))
        time.sleep(self.delay_s)
        verdicts = self.guard.check_batch(requests)
        self.log.append(("guard-end", time.perf_counter(), verdicts[0].outcome.value))
        return verdicts


class ScriptedChatModel(BaseChatModel):
    """Answers with the next scripted reply, streamed piece by piece, logging what happened.

    Each reply is a list of pieces, ``delay_s`` apart when streamed. While ``fail`` is set every call
    raises a fresh copy of ``error`` instead (by default: the model server crashed). ``prompts`` keeps the
    messages of every call.
    """

    replies: list[list[str]]
    delay_s: float = 0.0
    fail: bool = False
    error: Exception = Field(default_factory=lambda: RuntimeError("model server crashed"))
    log: Log = Field(default_factory=list)
    prompts: list[list[BaseMessage]] = Field(default_factory=list)

    @property
    def _llm_type(self) -> str:
        return "scripted"

    def _next_reply(self, messages: list[BaseMessage]) -> list[str]:
        self.prompts.append(list(messages))
        if self.fail:
            raise copy.copy(self.error)
        return self.replies.pop(0)

    def _generate(
        self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kwargs: Any
    ) -> ChatResult:
        return ChatResult(generations=[ChatGeneration(message=AIMessage("".join(self._next_reply(messages))))])

    def _stream(
        self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kwargs: Any
    ) -> Iterator[ChatGenerationChunk]:
        self.log.append(("start", time.perf_counter(), ""))
        pieces = self._next_reply(messages)
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


class FakeOpenAIServer:
    """An OpenAI-compatible server on loopback, scripted: a guard and a chat model behind one base URL.

    ``POST /v1/completions`` answers as a Llama Guard model with ``guard`` (a text, or a function of the
    rendered prompt); ``POST /v1/chat/completions`` streams ``reply`` piece by piece, ``piece_delay_s``
    apart, or answers HTTP ``chat_status`` when that is not 200 (a chat server that fails). What was asked
    is kept: ``guard_prompts`` and ``chat_requests`` (the ``messages`` of each chat call, as sent).
    ``hung_up`` is set when a client closed the connection in the middle of a streamed reply (a cancelled
    generation), at ``hung_up_at`` (``time.monotonic()``). Use it as a context manager, or ``close()``.
    """

    def __init__(
        self,
        guard: Answer = "safe",
        reply: Sequence[str] = ("Hello ", "there."),
        piece_delay_s: float = 0.0,
        chat_status: int = 200,
    ) -> None:
        import http.server
        import threading

        self.guard = guard
        self.reply = list(reply)
        self.piece_delay_s = piece_delay_s
        self.chat_status = chat_status
        self.guard_prompts: list[str] = []
        self.chat_requests: list[list[dict[str, Any]]] = []
        self.streaming = threading.Event()
        self.hung_up = threading.Event()
        self.hung_up_at: float | None = None
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                if self.path.endswith("/completions") and "chat" not in self.path:
                    server._complete(self, body)
                elif self.path.endswith("/chat/completions"):
                    server._chat(self, body)
                else:
                    server._send_json(self, 404, {"error": {"message": f"no route {self.path}"}})

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def cli_options(self) -> list[str]:
        """The CLI options that point both the guard and the chat model at this server."""
        return [
            "--guard-endpoint",
            self.url,
            "--guard-model",
            "guard",
            "--chat-endpoint",
            self.url,
            "--chat-model",
            "chat",
        ]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FakeOpenAIServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @staticmethod
    def _send_json(handler: Any, status: int, data: Any) -> None:
        payload = json.dumps(data).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(payload)))
        handler.end_headers()
        handler.wfile.write(payload)

    def _complete(self, handler: Any, body: dict[str, Any]) -> None:
        prompt = str(body.get("prompt", ""))
        self.guard_prompts.append(prompt)
        text = self.guard(prompt) if callable(self.guard) else self.guard
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": "stop"}
        data = {
            "id": "cmpl",
            "object": "text_completion",
            "created": 0,
            "model": body.get("model"),
            "choices": [choice],
        }
        self._send_json(handler, 200, data)

    def _chat(self, handler: Any, body: dict[str, Any]) -> None:
        self.chat_requests.append(list(body.get("messages", [])))
        if self.chat_status != 200:
            self._send_json(handler, self.chat_status, {"error": {"message": "the chat model crashed"}})
            return
        model = body.get("model")
        if not body.get("stream"):
            message = {"role": "assistant", "content": "".join(self.reply)}
            choice = {"index": 0, "message": message, "finish_reason": "stop"}
            self._send_json(
                handler,
                200,
                {"id": "c", "object": "chat.completion", "created": 0, "model": model, "choices": [choice]},
            )
            return
        handler.send_response(200)
        handler.send_header("Content-Type", "text/event-stream")
        handler.send_header("Connection", "close")
        handler.end_headers()
        self.streaming.set()

        def event(delta: dict[str, Any], finish: str | None = None) -> bytes:
            choice = {"index": 0, "delta": delta, "finish_reason": finish}
            chunk = {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": model, "choices": [choice]}
            return f"data: {json.dumps(chunk)}\n\n".encode()

        try:
            for piece in self.reply:
                time.sleep(self.piece_delay_s)
                handler.wfile.write(event({"role": "assistant", "content": piece}))
                handler.wfile.flush()
            handler.wfile.write(event({}, "stop") + b"data: [DONE]\n\n")
            handler.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            self.hung_up_at = time.monotonic()
            self.hung_up.set()
