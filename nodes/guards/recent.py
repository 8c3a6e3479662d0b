"""Remember recent verdicts, so the output guard node does not re-check a reply the stream already passed."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence

from guardgraph.nodes.checks.request import GuardRequest
from guardgraph.nodes.checks.verdict import Verdict
from guardgraph.nodes.guards.base import Guard


class RecentVerdicts:
    """A Guard wrapper with a small thread-safe LRU of (request → verdict); requests are immutable."""

    def __init__(self, guard: Guard, size: int = 256) -> None:
        self.guard = guard
        self.name = guard.name
        self.size = size
        self._cache: OrderedDict[GuardRequest, Verdict] = OrderedDict()
        self._lock = threading.Lock()

    def _get(self, request: GuardRequest) -> Verdict | None:
        with self._lock:
            verdict = self._cache.get(request)
            if verdict is not None:
                self._cache.move_to_end(request)
            return verdict

    def _put(self, request: GuardRequest, verdict: Verdict) -> None:
        with self._lock:
            self._cache[request] = verdict
            while len(self._cache) > self.size:
                self._cache.popitem(last=False)

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
