"""Scripted fakes for tests: guards, completion backends and chat models that answer what the test says,
and servers on loopback: :class:`LoopbackServer`, the stand-in Llama Guard endpoint it can serve, and a
scripted OpenAI-compatible guard and chat server (:class:`FakeOpenAIServer`)."""

from __future__ import annotations

import copy
import json
import math
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
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


def checked_turn(prompt: str) -> str:
    """The last turn of a rendered guard prompt's conversation (``User: ...`` or ``Agent: ...``)."""
    conversation = prompt.split("<BEGIN CONVERSATION>", 1)[1].split("<END CONVERSATION>", 1)[0]
    return conversation.strip().split("\n\n")[-1]


def keyword_answer(*unsafe_words: str, codes: str = "S1") -> Callable[[str], str]:
    """``unsafe\\n{codes}`` when the checked (last) turn contains one of the words, else ``safe``."""

    def answer(prompt: str) -> str:
        last_turn = checked_turn(prompt).lower()
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


# --------------------------------------------------------------------------------------------- servers

Respond = Callable[[str, dict[str, Any]], tuple[str, bytes]]
"""What a loopback server answers to a POST: ``respond(path, json_body) -> (content type, payload)``."""


class LoopbackServer:
    """An HTTP server on a free 127.0.0.1 port, for a ``with`` block (or ``start()``/``stop()``): every POST's
    JSON body goes to ``respond``; ``requests`` records each ``(path, body)``; ``url`` is ``http://127.0.0.1:PORT``."""

    def __init__(self, respond: Respond, port: int = 0) -> None:
        self.respond = respond
        self.port = port
        self.requests: list[tuple[str, dict[str, Any]]] = []
        self.url = ""
        self._http: ThreadingHTTPServer | None = None

    def __enter__(self) -> LoopbackServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> LoopbackServer:
        """Serve on a free port from a daemon thread; ``url`` is set."""
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append((self.path, body))
                content_type, payload = server.respond(self.path, body)
                self.send_response(200)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: Any) -> None:
                pass

        self._http = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._http.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self._http.server_address[1]}"
        return self

    def stop(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None


# Blunt harm in a checked message -> words of the category names it falls under (Llama Guard 1 and 3 alike),
# tried in order. Phrases come before the words they contain.
BLUNT_HARM: dict[str, tuple[str, ...]] = {
    "kill myself": ("self-harm",),
    "suicide": ("self-harm",),
    "pipe bomb": ("weapons",),
    "bomb": ("weapons",),
    "nerve agent": ("weapons",),
    "murder": ("violen",),
    "stab": ("violen",),
    "meth": ("substances", "non-violent crimes"),
    "heroin": ("substances", "non-violent crimes"),
    "launder": ("criminal", "non-violent crimes"),
    "steal": ("criminal", "non-violent crimes"),
}
CATEGORY_LINE = re.compile(r"^([A-Z][0-9]+): (.+?)\.\s*$", re.MULTILINE)
LLAMA3_ASSISTANT_HEADERS = ("<|end_header_id|>", "<|header_end|>")


def blunt_harm(text: str) -> str | None:
    """The first :data:`BLUNT_HARM` phrase in ``text``, or None."""
    lowered = text.lower()
    return next((phrase for phrase in BLUNT_HARM if phrase in lowered), None)


def blunt_harm_p_unsafe(text: str) -> float:
    """The stand-in's P(unsafe): 0.97 for blunt harm, 0.01 for anything else."""
    return 0.97 if blunt_harm(text) else 0.01


class StandInLlamaGuard:
    """Llama Guard as the seed document shows it, behind an OpenAI-compatible ``/v1/completions``.

    It reads the rendered prompt (any format), flags blunt harm in the checked turn (:data:`BLUNT_HARM`)
    with the policy's matching category and says ``safe`` to everything else, custom categories included.
    Like vLLM it returns top logprobs: P(unsafe) at the verdict position is ``p_unsafe(checked turn)``
    (:func:`blunt_harm_p_unsafe` unless given) and the verdict word is the likelier one. A prompt continued
    after ``unsafe\\n`` gets the category line. ``prompts`` records what it was asked.
    """

    def __init__(self, p_unsafe: Callable[[str], float] = blunt_harm_p_unsafe) -> None:
        self.p_unsafe = p_unsafe
        self.prompts: list[str] = []

    @staticmethod
    def category(prompt: str, text: str) -> str:
        """The code the stand-in names for ``text``: the first category whose name fits its harm, else the first."""
        block = prompt.split("<BEGIN UNSAFE CONTENT CATEGORIES>", 1)[1].split("<END UNSAFE CONTENT CATEGORIES>", 1)[0]
        categories = [(code, name.lower()) for code, name in CATEGORY_LINE.findall(block)]
        phrase = blunt_harm(text)
        for hint in BLUNT_HARM[phrase] if phrase else ():
            for code, name in categories:
                if hint in name:
                    return code
        return categories[0][0]

    def complete(self, prompt: str, index: int = 0) -> dict[str, Any]:
        """One completion choice for ``prompt``, with logprobs."""
        self.prompts.append(prompt)
        text = checked_turn(prompt)
        code = self.category(prompt, text)
        if prompt.endswith("unsafe\n"):  # asked to continue after "unsafe": the categories
            tokens = [code]
            top = [{code: 0.0}]
        else:
            p = min(max(self.p_unsafe(text), 1e-6), 1 - 1e-6)
            verdict = ["unsafe", "\n", code] if p >= 0.5 else ["safe"]
            lead = ["\n\n"] if prompt.endswith(LLAMA3_ASSISTANT_HEADERS) else []
            tokens = [*lead, *verdict]
            word = {"safe": math.log(1 - p), "unsafe": math.log(p)}
            top = [{t: 0.0} for t in lead] + [word] + [{t: 0.0} for t in verdict[1:]]
        logprobs = {
            "tokens": tokens,
            "token_logprobs": [max(t.values()) for t in top],
            "top_logprobs": top,
            "text_offset": [0] * len(tokens),
        }
        return {"index": index, "text": "".join(tokens), "finish_reason": "stop", "logprobs": logprobs}

    def __call__(self, path: str, body: dict[str, Any]) -> tuple[str, bytes]:
        assert path == "/v1/completions", path
        prompts = body["prompt"] if isinstance(body["prompt"], list) else [body["prompt"]]
        answer = {"id": "cmpl-standin", "object": "text_completion", "created": 0, "model": body["model"]}
        answer["choices"] = [self.complete(prompt, index) for index, prompt in enumerate(prompts)]
        written = sum(len(choice["logprobs"]["tokens"]) for choice in answer["choices"])
        answer["usage"] = {"prompt_tokens": 0, "completion_tokens": written, "total_tokens": written}
        return "application/json", json.dumps(answer).encode()


def standin_llama_guard_endpoint(
    p_unsafe: Callable[[str], float] = blunt_harm_p_unsafe, port: int = 0
) -> LoopbackServer:
    """A :class:`LoopbackServer` serving a :class:`StandInLlamaGuard`; its ``/v1`` URL is the guard endpoint."""
    return LoopbackServer(StandInLlamaGuard(p_unsafe), port)


if __name__ == "__main__":  # python -m tests.fakes [PORT]: the stand-in Llama Guard on loopback until Ctrl-C
    import contextlib
    import sys

    with standin_llama_guard_endpoint(port=int(sys.argv[1]) if len(sys.argv) > 1 else 8001) as stand_in:
        print(f"stand-in Llama Guard at {stand_in.url}/v1 (Ctrl-C stops it)", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()


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
