"""Chat generation in a background thread: started early, consumed later, cancellable at any token.

The input guard node starts the chat model speculatively (``nodes/speculation.py``) so generation
overlaps the input check; if the input is unsafe the generation is cancelled and its tokens are dropped
unseen. Cancelling also wakes the consumer at once, which gets :class:`GenerationCancelled` rather than a
reply cut short; :func:`cancel_generations` is what an interrupt (Ctrl-C) does to every running one.
Until its first text piece, a local model also reports the text held back so far (``Lookahead``) so
that the first chunk's output check can start a decoding step early (``precheck.py``).
"""

from __future__ import annotations

import atexit
import queue
import threading
import time
import weakref
from collections.abc import Iterator, Sequence
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import BaseMessage

from guardgraph.nodes.checks.request import content_text
from guardgraph.nodes.streaming.precheck import Lookahead

_DONE = object()
_CANCELLED = object()


class GenerationCancelled(Exception):
    """The generation was cancelled before it finished: what it wrote is not a reply."""


def _local_pipeline(model: BaseChatModel) -> Any | None:
    """The transformers pipeline under a ChatHuggingFace model, or None for any other model."""
    pipeline = getattr(getattr(model, "llm", None), "pipeline", None)
    return pipeline if pipeline is not None and hasattr(model, "_to_chat_prompt") else None


def _generate_locally(
    model: Any, pipeline: Any, messages: list[BaseMessage], cancelled: threading.Event, put: Any
) -> None:
    """Run ``generate`` in this very thread, streaming text to ``put`` and stopping at the next token once
    cancelled; so when this returns no model thread is left running (ChatHuggingFace streams from a
    thread of its own that nothing can stop or join). Word pieces are released exactly as
    ``ChatHuggingFace.stream`` releases them (the same ``TextStreamer`` rule); before the first one, each
    token also puts a ``Lookahead`` with the unfinished word."""
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList, TextStreamer

    class QueueStreamer(TextStreamer):
        released_any = False

        def put(self, value: Any) -> None:
            super().put(value)
            if self.released_any or cancelled.is_set() or not getattr(self, "token_cache", None):
                return
            text = str(self.tokenizer.decode(self.token_cache, **self.decode_kwargs))
            put(Lookahead(text[getattr(self, "print_len", 0) :]))

        def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
            if text and not cancelled.is_set():
                self.released_any = True
                put(text)

    class StopWhenCancelled(StoppingCriteria):
        def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> bool:
            return cancelled.is_set()

    streamer = QueueStreamer(pipeline.tokenizer, skip_prompt=True, skip_special_tokens=True)
    pipeline(
        model._to_chat_prompt(messages),
        streamer=streamer,
        stopping_criteria=StoppingCriteriaList([StopWhenCancelled()]),
    )


_LIVE: weakref.WeakSet[BackgroundGeneration] = weakref.WeakSet()


def cancel_generations() -> None:
    """Cancel every generation running in this process (what Ctrl-C means in the CLI)."""
    for generation in list(_LIVE):
        generation.cancel()


@atexit.register
def _stop_live_generations() -> None:
    """At exit, end running generations; wait for local ones so no model thread is cut off inside torch.

    A remote stream's thread is a daemon blocked on the network at worst: it is not waited for.
    """
    cancel_generations()
    for generation in list(_LIVE):
        if generation.local:
            generation.join(timeout_s=10.0)


class BackgroundGeneration:
    """Streams ``model`` over ``messages`` into a queue from a daemon thread."""

    def __init__(self, model: BaseChatModel, messages: Sequence[BaseMessage]) -> None:
        self._queue: queue.Queue[object] = queue.Queue()
        self._cancel = threading.Event()
        self.started_at = time.perf_counter()
        self.local = _local_pipeline(model) is not None
        self._thread = threading.Thread(target=self._produce, args=(model, list(messages)), daemon=True)
        _LIVE.add(self)
        self._thread.start()

    def _produce(self, model: BaseChatModel, messages: list[BaseMessage]) -> None:
        try:
            pipeline = _local_pipeline(model)
            if pipeline is not None:
                _generate_locally(model, pipeline, messages, self._cancel, self._queue.put)
            else:
                self._stream(model, messages)
        except BaseException as error:  # handed to the consumer, which decides what the user sees
            self._queue.put(error)
        finally:
            self._queue.put(_DONE)

    def _stream(self, model: BaseChatModel, messages: list[BaseMessage]) -> None:
        stream = model.stream(messages)
        try:
            for chunk in stream:
                if self._cancel.is_set():
                    break
                text = content_text(chunk.content)
                if text:
                    self._queue.put(text)
        finally:
            close = getattr(stream, "close", None)
            if close is not None:
                close()

    def cancel(self) -> None:
        """Stop generating; whatever was produced is dropped and a waiting consumer wakes at once."""
        if not self._cancel.is_set():
            self._cancel.set()
            self._queue.put(_CANCELLED)

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def join(self, timeout_s: float | None = None) -> None:
        self._thread.join(timeout_s)

    def tokens(self) -> Iterator[str]:
        """The generated text pieces in order; re-raises the model's error, if any."""
        for item in self.pieces():
            if isinstance(item, str):
                yield item

    def pieces(self) -> Iterator[str | Lookahead]:
        """Like :meth:`tokens`, with the ``Lookahead`` items that precede the first piece.

        Raises :class:`GenerationCancelled` once the generation is cancelled, whatever is still queued.
        """
        while True:
            item = self._queue.get()
            if item is _CANCELLED or self._cancel.is_set():
                raise GenerationCancelled("the reply was stopped before it was complete")
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            assert isinstance(item, str | Lookahead)
            yield item
