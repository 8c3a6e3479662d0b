"""Chat generation in a background thread: started early, consumed later, cancellable at any token.

The input guard starts the chat model speculatively so generation overlaps the input check; if the
input is unsafe the generation is cancelled and its tokens are dropped unseen.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import BaseMessage

from nodes.conversation import content_text

_DONE = object()


class GenerationCancelled(Exception):
    """Raised inside the producer when the consumer no longer wants tokens."""


class BackgroundGeneration:
    """Streams ``model`` over ``messages`` into a queue from a daemon thread."""

    def __init__(self, model: BaseChatModel, messages: Sequence[BaseMessage]) -> None:
        self._queue: queue.Queue[object] = queue.Queue()
        self._cancel = threading.Event()
        self.started_at = time.perf_counter()
        self._thread = threading.Thread(target=self._produce, args=(model, list(messages)), daemon=True)
        self._thread.start()

    def _produce(self, model: BaseChatModel, messages: list[BaseMessage]) -> None:
        stream = model.stream(messages)
        try:
            for chunk in stream:
                if self._cancel.is_set():
                    break
                text = content_text(chunk.content)
                if text:
                    self._queue.put(text)
        except BaseException as error:  # handed to the consumer, which decides what the user sees
            self._queue.put(error)
        finally:
            close = getattr(stream, "close", None)
            if close is not None:
                close()
            self._queue.put(_DONE)

    def cancel(self) -> None:
        """Stop generating; whatever was produced is dropped."""
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def tokens(self) -> Iterator[str]:
        """The generated text pieces in order; re-raises the model's error, if any."""
        while True:
            item = self._queue.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            assert isinstance(item, str)
            yield item


@dataclass
class SpeculationRegistry:
    """Hands a generation started by the input guard to the chat node of the same turn."""

    max_age_s: float = 600.0
    _running: dict[str, BackgroundGeneration] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self, key: str, model: BaseChatModel, messages: Sequence[BaseMessage]) -> BackgroundGeneration:
        generation = BackgroundGeneration(model, messages)
        with self._lock:
            self._expire()
            previous = self._running.pop(key, None)
            self._running[key] = generation
        if previous is not None:
            previous.cancel()
        return generation

    def take(self, key: str) -> BackgroundGeneration | None:
        with self._lock:
            return self._running.pop(key, None)

    def cancel(self, key: str) -> None:
        generation = self.take(key)
        if generation is not None:
            generation.cancel()

    def _expire(self) -> None:
        now = time.perf_counter()
        for key in [k for k, g in self._running.items() if now - g.started_at > self.max_age_s]:
            self._running.pop(key).cancel()
