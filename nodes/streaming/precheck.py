"""Check the first chunk ahead of time: its text is often known one decoding step before it is released.

transformers' ``TextStreamer`` holds text back while it may still change: before 5.24 every word waits
for the space that ends it (``To`` is decoded after the prefill, ``To `` released with the next token,
`` make``); since 5.24 plain words are released at once, but text with symbols (``**Note:``, ``1.``,
``Sure,``) still waits for the next space. While such a first piece waits, the guard can check it
guessed as the unfinished text plus a space, during the next decoding step; when the streamer then
releases exactly that text, the verdict is already there (or on its way).

Only a verdict for the *exact* text to be released is ever used; a wrong guess is just a check whose
verdict nobody reads, and the real chunk is checked as usual.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from guardgraph.nodes.checks.verdict import Verdict


@dataclass(frozen=True)
class Lookahead:
    """Decoded reply text after the last released piece that is not a complete piece yet."""

    text: str


def guessed_chunk(before: str, lookahead: Lookahead) -> str | None:
    """The chunk the streamer will most likely release next: the unfinished word plus a space."""
    tail = lookahead.text
    if not tail or tail[-1].isspace() or "\ufffd" in tail:  # nothing to guess, or a half-decoded character
        return None
    return before + tail + " "


class Precheck:
    """Runs guessed checks on one worker thread, newest guess first; hands a verdict over only on exact match."""

    def __init__(self, check: Callable[[str], Verdict]) -> None:
        self._check = check
        self._executor: ThreadPoolExecutor | None = None
        self._guesses: dict[str, Future[Verdict]] = {}

    def guess(self, text: str) -> None:
        """Start checking ``text`` (a queued older guess that has not started is dropped)."""
        if text in self._guesses:
            return
        for future in self._guesses.values():
            future.cancel()  # only succeeds for a guess still waiting behind a running one
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="guardgraph-precheck")
        context = contextvars.copy_context()  # callbacks and tracing go along, as with a direct check
        self._guesses[text] = self._executor.submit(context.run, self._check, text)

    def verdict(self, text: str) -> Verdict | None:
        """The verdict of a guess for exactly ``text`` (waiting for it if it runs), else None."""
        future = self._guesses.get(text)
        if future is None or future.cancelled():
            return None
        return future.result()

    def close(self) -> None:
        """No more guesses: drop the waiting ones; a running one finishes unread."""
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
        self._guesses.clear()
