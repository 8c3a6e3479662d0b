"""The Guard protocol: every backend answers a GuardRequest with a Verdict."""

from __future__ import annotations

import asyncio
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from guardgraph.nodes.checks.request import GuardRequest
from guardgraph.nodes.checks.verdict import Verdict


@runtime_checkable
class Guard(Protocol):
    """Anything that can judge the last turn of a conversation under a policy."""

    name: str

    def check(self, request: GuardRequest) -> Verdict: ...

    def check_batch(self, requests: Sequence[GuardRequest]) -> list[Verdict]: ...

    async def acheck(self, request: GuardRequest) -> Verdict: ...


class BaseGuard(ABC):
    """Shared plumbing: batch by default, async off the event loop, latency stamped on each verdict."""

    name: str = "guard"

    @abstractmethod
    def _check_batch(self, requests: Sequence[GuardRequest]) -> list[Verdict]:
        """Judge ``requests``; latency is filled in by the caller."""

    def check(self, request: GuardRequest) -> Verdict:
        return self.check_batch([request])[0]

    def check_batch(self, requests: Sequence[GuardRequest]) -> list[Verdict]:
        if not requests:
            return []
        started = time.perf_counter()
        verdicts = self._check_batch(requests)
        if len(verdicts) != len(requests):
            raise RuntimeError(f"{self.name} returned {len(verdicts)} verdicts for {len(requests)} requests")
        per_item_ms = (time.perf_counter() - started) * 1000 / len(requests)
        return [
            v if v.latency_ms else v.with_updates(latency_ms=per_item_ms, guard=v.guard or self.name) for v in verdicts
        ]

    async def acheck(self, request: GuardRequest) -> Verdict:
        return await asyncio.to_thread(self.check, request)
