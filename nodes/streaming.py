"""Hold-back streaming: a chat token reaches the user only after the output guard passed the reply up to it.

Tokens are gathered into chunks (a few tokens first so the first words show quickly, then sentences).
Each chunk is checked as part of the whole reply so far, with the conversation as context; generation
keeps running in its own thread while a chunk is checked. On an unsafe verdict nothing more is released.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from nodes.verdict import Verdict

SENTENCE_ENDS = (".", "!", "?", "\n", ":", ";")


@dataclass(frozen=True)
class Chunking:
    """When to check: after ``first_chunk_tokens`` pieces, then at sentence ends or every ``max_chunk_tokens``."""

    first_chunk_tokens: int = 1
    min_chunk_tokens: int = 4
    max_chunk_tokens: int = 32

    def boundary(self, pending: str, pieces: int, first: bool) -> bool:
        if first:
            return pieces >= self.first_chunk_tokens
        if pieces >= self.max_chunk_tokens:
            return True
        return pieces >= self.min_chunk_tokens and pending.rstrip(" ").endswith(SENTENCE_ENDS)


@dataclass(frozen=True)
class HoldBackResult:
    """``released`` is exactly what the user saw; ``draft`` is everything generated up to the stop."""

    released: str
    draft: str
    verdict: Verdict | None
    blocked: bool


def release_guarded(
    pieces: Iterable[str],
    check: Callable[[str], Verdict],
    emit: Callable[[str], None],
    chunking: Chunking | None = None,
) -> HoldBackResult:
    """Check the growing reply chunk by chunk; ``emit`` only text whose check passed.

    The returned verdict is the last check, which always covers the complete draft when not blocked.
    """
    chunking = chunking or Chunking()
    released, pending, count, first = "", "", 0, True
    last: Verdict | None = None
    for piece in pieces:
        pending += piece
        count += 1
        if not chunking.boundary(pending, count, first):
            continue
        last = check(released + pending)
        if last.blocks:
            return HoldBackResult(released, released + pending, last, blocked=True)
        emit(pending)
        released, pending, count, first = released + pending, "", 0, False
    if last is not None and not pending:  # the last check already covered the whole reply
        return HoldBackResult(released, released, last, blocked=False)
    verdict = check(released + pending)
    if verdict.blocks:
        return HoldBackResult(released, released + pending, verdict, blocked=True)
    if pending:
        emit(pending)
    return HoldBackResult(released + pending, released + pending, verdict, blocked=False)
