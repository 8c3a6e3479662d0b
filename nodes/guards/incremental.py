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

from guardgraph.nodes.checks.request import GuardRequest
from guardgraph.nodes.checks.verdict import Verdict
from guardgraph.nodes.guards.base import Guard
from guardgraph.nodes.guards.recent import RecentVerdicts

WINDOW_MEMORY = 1024  # windows remembered: a 200-window reply of each of 5 concurrent streams


class IncrementalWindows(RecentVerdicts):
    """The guard behind the windows, remembering recent window verdicts; a reused verdict cost no time now."""

    def __init__(self, guard: Guard, size: int = WINDOW_MEMORY) -> None:
        super().__init__(guard, size)

    def _get(self, request: GuardRequest) -> Verdict | None:
        verdict = super()._get(request)
        return None if verdict is None else verdict.with_updates(latency_ms=0.0)
