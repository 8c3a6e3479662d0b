"""Hold-back streaming: a chat token reaches the user only after the output guard passed the reply up to it.

Tokens are gathered into chunks (a few tokens first so the first words show quickly, then sentences).
Each chunk is checked as part of the whole reply so far, with the conversation as context; generation
keeps running in its own thread while a chunk is checked. On an unsafe verdict nothing more is released.
The first chunk, which the user waits for, is checked ahead of time from the generation's lookahead
(``nodes/precheck.py``); its text is still released only with a verdict for exactly that text.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from guardgraph.nodes.checks.verdict import Verdict
from guardgraph.nodes.streaming.precheck import Lookahead, Precheck, guessed_chunk

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
    pieces: Iterable[str | Lookahead],
    check: Callable[[str], Verdict],
    emit: Callable[[str], None],
    chunking: Chunking | None = None,
) -> HoldBackResult:
    """Check the growing reply chunk by chunk; ``emit`` only text whose check passed.

    ``Lookahead`` items (the unfinished word, from the generation) let the first chunk's check start
    before the chunk is complete. The returned verdict is the last check, which always covers the
    complete draft when not blocked.
    """
    chunking = chunking or Chunking()
    released, pending, count, first = "", "", 0, True
    last: Verdict | None = None
    precheck = Precheck(check)
    try:
        for piece in pieces:
            if isinstance(piece, Lookahead):
                guess = guessed_chunk(released + pending, piece)
                if first and guess is not None and count + 1 >= chunking.first_chunk_tokens:
                    precheck.guess(guess)
                continue
            pending += piece
            count += 1
            if not (released + pending).strip() or not chunking.boundary(pending, count, first):
                continue  # blank text alone is not a reply a guard can judge: wait for words
            last = precheck.verdict(released + pending) if first else None
            if last is None:
                last = check(released + pending)
            precheck.close()
            if last.blocks:
                return HoldBackResult(released, released + pending, last, blocked=True)
            emit(pending)
            released, pending, count, first = released + pending, "", 0, False
    finally:
        precheck.close()
    if last is not None and not pending:  # the last check already covered the whole reply
        return HoldBackResult(released, released, last, blocked=False)
    verdict = check(released + pending)
    if verdict.blocks:
        return HoldBackResult(released, released + pending, verdict, blocked=True)
    if pending:
        emit(pending)
    return HoldBackResult(released + pending, released + pending, verdict, blocked=False)
