"""Coalesce concurrent guard checks into batches: any Guard, many threads, one ``check_batch``.

A server handling several conversations at once calls ``check()`` from several threads; a batched
forward pass costs far less than the same checks one by one. ``BatchingGuard`` queues each call,
waits up to ``max_wait_ms`` for more (or until ``max_batch`` are waiting), runs one
``inner.check_batch`` on a worker thread and hands every caller its own verdict.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from queue import Empty, SimpleQueue
from typing import Any

from guardgraph.nodes.checks.request import GuardRequest
from guardgraph.nodes.checks.verdict import Verdict
from guardgraph.nodes.guards.base import Guard

_STOP = object()


class BatchingGuard:
    """Wraps ``inner``; concurrent ``check()`` calls share one ``inner.check_batch``."""

    def __init__(self, inner: Guard, max_batch: int = 32, max_wait_ms: float = 5.0) -> None:
        self.inner = inner
        self.name = inner.name
        self.max_batch = max(1, max_batch)
        self.max_wait_s = max(0.0, max_wait_ms) / 1000
        self.batches: list[int] = []  # sizes of the batches run, for tests and stats
        self._queue: SimpleQueue[object] = SimpleQueue()
        self._closed = False
        self._worker = threading.Thread(target=self._run, name=f"batching-guard:{self.name}", daemon=True)
        self._worker.start()

    def __getattr__(self, name: str) -> Any:  # what it does not define (window sizes, format...) is the inner guard's
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    def check(self, request: GuardRequest) -> Verdict:
        return self.submit(request).result()

    def submit(self, request: GuardRequest) -> Future[Verdict]:
        if self._closed:
            raise RuntimeError("BatchingGuard is closed")
        future: Future[Verdict] = Future()
        self._queue.put((request, future))
        return future

    def check_batch(self, requests: Sequence[GuardRequest]) -> list[Verdict]:
        futures = [self.submit(r) for r in requests]
        return [f.result() for f in futures]

    async def acheck(self, request: GuardRequest) -> Verdict:
        return await asyncio.wrap_future(self.submit(request))

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._queue.put(_STOP)
            self._worker.join(timeout=5)

    def __enter__(self) -> BatchingGuard:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            pending = [item]
            deadline = time.monotonic() + self.max_wait_s
            stop = False
            while len(pending) < self.max_batch:
                timeout = deadline - time.monotonic()
                try:
                    nxt = self._queue.get(timeout=timeout) if timeout > 0 else self._queue.get_nowait()
                except Empty:
                    break
                if nxt is _STOP:
                    stop = True
                    break
                pending.append(nxt)
            self._dispatch(pending)  # type: ignore[arg-type]
            if stop:
                return

    def _dispatch(self, pending: list[tuple[GuardRequest, Future[Verdict]]]) -> None:
        live = [(r, f) for r, f in pending if f.set_running_or_notify_cancel()]
        if not live:
            return
        self.batches.append(len(live))
        try:
            verdicts = self.inner.check_batch([r for r, _ in live])
        except BaseException as error:  # every waiting caller gets the error, the worker survives
            for _, future in live:
                future.set_exception(error)
            return
        for (_, future), verdict in zip(live, verdicts, strict=True):
            future.set_result(verdict)
