"""Sentence boundaries in plain text: where long text is cut into windows, and the parts a guard may score alone.

A sentence ends at ``.``, ``!`` or ``?`` (optionally followed by a closing quote or bracket) followed by
whitespace, or at a line break. Abbreviations ("Dr. Smith") cut a sentence early; that only makes a part shorter.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

_BREAK = re.compile(r"(?<=[.!?])\s+|(?<=[.!?][\"')\]])\s+|\n\s*")


def sentence_breaks(text: str, low: int = 0, high: int | None = None) -> Iterator[tuple[int, int]]:
    """``(end, next_start)`` of each break between sentences whose ``end`` lies in ``[low, high)``: the sentence
    before it is ``...text[:end]``, the next one starts at ``next_start``."""
    high = len(text) if high is None else min(high, len(text))
    for match in _BREAK.finditer(text, low, len(text)):
        if match.start() >= high:
            return
        yield match.start(), match.end()


def split_sentences(text: str) -> list[str]:
    """The sentences of ``text``, stripped, empty ones dropped."""
    return [piece.strip() for piece in _BREAK.split(text) if piece.strip()]


def readable_sentences(text: str) -> list[str]:
    """The sentences of ``text`` a guard reads alone: those with a letter in them; none when there is only one
    (the text says it all)."""
    sentences = [s for s in split_sentences(text) if any(c.isalpha() for c in s)]
    return sentences if len(sentences) > 1 else []
