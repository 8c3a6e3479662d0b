"""Incremental windows: a text that grows (a streamed reply) is checked again only where it changed.

:func:`~guardgraph.nodes.guards.windowed.split_windows` cuts a text from its start, and each window but the
last is fixed by the text up to its own end: when the text grows, those windows come back unchanged, with
the same context turns. :class:`IncrementalWindows` remembers the verdicts of recent windows by their exact
request, so each chunk check of a streamed reply sends only the windows that hold new text to the guard,
while the reply's verdict is still combined from all of its windows, as a full check would.

Reuse never depends on how windows are cut: a verdict is reused only for an identical request. A cut that
keeps earlier windows stable as the text grows makes every chunk check cost about one window; any other
cut only checks more.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence

from guardgraph.nodes.checks.request import GuardRequest
from guardgraph.nodes.checks.verdict import Verdict
from guardgraph.nodes.guards.base import Guard

WINDOW_MEMORY = 1024  # windows remembered: a 200-window reply of each of 5 concurrent streams


class IncrementalWindows:
    """The guard behind the windows, with a thread-safe LRU of recent (window request → verdict).

    Requests are immutable and hashable; a reused verdict cost no time now, so it reports no latency.
    """

    def __init__(self, guard: Guard, size: int = WINDOW_MEMORY) -> None:
        self.guard = guard
        self.name = guard.name
        self.size = size
        self._verdicts: OrderedDict[GuardRequest, Verdict] = OrderedDict()
        self._lock = threading.Lock()

    def _get(self, request: GuardRequest) -> Verdict | None:
        with self._lock:
            verdict = self._verdicts.get(request)
            if verdict is None:
                return None
            self._verdicts.move_to_end(request)
        return verdict.with_updates(latency_ms=0.0)

    def _put(self, request: GuardRequest, verdict: Verdict) -> None:
        with self._lock:
            self._verdicts[request] = verdict
            while len(self._verdicts) > self.size:
                self._verdicts.popitem(last=False)

    def check(self, request: GuardRequest) -> Verdict:
        return self.check_batch([request])[0]

    def check_batch(self, requests: Sequence[GuardRequest]) -> list[Verdict]:
        found = [self._get(r) for r in requests]
        missing = [r for r, v in zip(requests, found, strict=True) if v is None]
        fresh = iter(self.guard.check_batch(missing)) if missing else iter(())
        verdicts: list[Verdict] = []
        for request, verdict in zip(requests, found, strict=True):
            if verdict is None:
                verdict = next(fresh)
                self._put(request, verdict)
            verdicts.append(verdict)
        return verdicts

    def warm(self, request: GuardRequest) -> None:
        """Passed on to the guard, if it can warm up (see ``LlamaGuard.warm``)."""
        warm = getattr(self.guard, "warm", None)
        if warm is not None:
            warm(request)

    async def acheck(self, request: GuardRequest) -> Verdict:
        cached = self._get(request)
        if cached is not None:
            return cached
        verdict = await self.guard.acheck(request)
        self._put(request, verdict)
        return verdict
