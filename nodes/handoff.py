"""What one node hands to a later node of the same turn, kept in this process and never in a graph channel.

A value in a channel reaches places a turn's unchecked work must never reach: checkpoints and their
pending writes, and the ``tasks`` and ``debug`` stream modes, which carry every task's input. So the
speculative generation (``speculation.py``) and the draft reply (:class:`Draft`, from the chat node to the
output guard node) go through a :class:`Handoff` instead: a small in-process table keyed by the turn
(``turn_key``), from which the later node takes the value. A value nobody takes (a turn that died in
between) is dropped after ``max_age_s``; a run resumed in another process finds nothing and fails closed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from guardgraph.nodes.checks.verdict import Verdict

T = TypeVar("T")


@dataclass(frozen=True)
class Draft:
    """The chat model's reply while the output guard decides on it.

    ``verdict`` is the streamed reply's last chunk check, which covered exactly ``text``: the output guard
    node takes it as the decision rather than asking the guard (and writing the audit log) a second time.
    None when the reply was not streamed.
    """

    text: str
    verdict: Verdict | None = None


@dataclass
class Handoff(Generic[T]):
    """Values by turn key, each taken once; ``on_drop`` is applied to a value replaced or expired untaken."""

    max_age_s: float = 600.0
    on_drop: Callable[[T], None] | None = None
    _held: dict[str, tuple[float, T]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def put(self, key: str, value: T) -> None:
        now = time.monotonic()
        with self._lock:
            dropped = [v for k, (at, v) in self._held.items() if now - at > self.max_age_s]
            self._held = {k: (at, v) for k, (at, v) in self._held.items() if now - at <= self.max_age_s}
            previous = self._held.pop(key, None)
            self._held[key] = (now, value)
        if previous is not None:
            dropped.append(previous[1])
        for value in dropped:
            self._drop(value)

    def take(self, key: str) -> T | None:
        with self._lock:
            held = self._held.pop(key, None)
        return None if held is None else held[1]

    def drop(self, key: str) -> None:
        """Take the value of ``key``, if any, and apply ``on_drop`` to it."""
        value = self.take(key)
        if value is not None:
            self._drop(value)

    def _drop(self, value: T) -> None:
        if self.on_drop is not None:
            self.on_drop(value)
