"""Long input: check a message longer than the guard's window in overlapping windows.

Nothing is truncated unchecked. The checked (last) message is cut into windows of at most
``window_chars`` characters that overlap by ``overlap_chars`` (cuts fall at sentence ends, else on
whitespace, so sentences and words stay whole); each window is checked as the last turn, after the earlier
turns as context, themselves cut from the start to ``context_chars``. All windows of all requests go to the
inner guard in ONE ``check_batch``, each distinct window once (and the sentences below with them; their second
readings in one more). The message's verdict is the worst window's:
unsafe if any window is unsafe (categories merged, max score), else error/unparseable if any window is, else
safe. Windows (and sentences, below) checked recently are not checked again
(``guardgraph.nodes.guards.incremental``): as a streamed reply grows, each chunk check sends only the windows with
new text to the inner guard.

Sentence evidence: a guard that pools its input (the offline guard) lets harmless text dilute one harmful
sentence in the same window. Where the inner guard declares ``sentence_evidence`` (role -> margin ``δ``), every
sentence of a message of that role with two or more sentences is also checked alone (a request whose ``part``
is ``"sentence"``), in the same batch and after the same context (none where the inner guard reads a sentence
alone: its ``sentence_context`` is false), and it decides as a window does when the guard is sure of it: unsafe
with P(unsafe) at least ``sigmoid(δ)`` (:func:`sentence_margin` ``>= δ``), or undecided. The sentences are the
whole message's, so a window's edge never cuts one into a fragment that reads differently. A sentence read after
context (a reply's sentence under its prompt) decides only when it also reaches the margin read without that
context, in a second batch of just those sentences: the harm has to be in the sentence itself, not the prompt's
harm read into one sentence of a careful answer to it (the two readings' weaker one decides; an undecided one
fails closed).

Sizes come from the inner guard when it declares them: ``max_input_chars`` (and optionally
``window_overlap_chars``), or ``context_tokens`` (converted at a conservative
:data:`CHARS_PER_TOKEN`); otherwise the defaults for Llama Guard (about 6000 tokens) apply.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from guardgraph.nodes.checks.request import GuardRequest, Turn
from guardgraph.nodes.checks.verdict import Outcome, Verdict
from guardgraph.nodes.guards.base import Guard
from guardgraph.nodes.guards.incremental import IncrementalWindows
from guardgraph.nodes.guards.sentences import readable_sentences, sentence_breaks

CHARS_PER_TOKEN = 3  # conservative for English text and code with a Llama 3 tokenizer
LLAMA_GUARD_TOKENS = 6000  # room for the message inside an 8k prompt with categories and instructions
DEFAULT_WINDOW_CHARS = LLAMA_GUARD_TOKENS * CHARS_PER_TOKEN // 2  # half for the message, half for context

# Worst first: the order in which window outcomes decide the message's outcome.
_SEVERITY = {Outcome.UNSAFE: 4, Outcome.ERROR: 3, Outcome.UNPARSEABLE: 2, Outcome.BYPASS: 1, Outcome.SAFE: 0}
_UNDECIDED = (Outcome.ERROR, Outcome.UNPARSEABLE)


def split_windows(text: str, window_chars: int, overlap_chars: int) -> list[str]:
    """Overlapping windows covering every character of ``text``; one window when it fits.

    Each window ends at the last sentence end in its second half (:mod:`guardgraph.nodes.guards.sentences`),
    else on whitespace in its last quarter; the next window starts ``overlap_chars`` before that end, moved
    forward to a sentence start, else to a word start. So a sentence is cut only where no sentence ends in half a
    window, and the overlap gives each window some of the text before it.
    """
    if window_chars <= 0:
        raise ValueError("window_chars must be positive")
    overlap_chars = max(0, min(overlap_chars, window_chars // 2))
    if len(text) <= window_chars:
        return [text]
    windows: list[str] = []
    start = 0
    while True:
        end = min(start + window_chars, len(text))
        if end < len(text):
            cut = _last_sentence_end(text, start + window_chars // 2, end)
            if cut is None:
                cut = _last_space(text, start + window_chars * 3 // 4, end)
            end = cut if cut is not None else end
        windows.append(text[start:end])
        if end >= len(text):
            return windows
        next_start = max(end - overlap_chars, start + 1)
        begin = _first_sentence_start(text, next_start, end)
        if begin is None:
            space = _first_space(text, next_start, min(end, next_start + overlap_chars // 4 + 1))
            begin = space + 1 if space is not None and space + 1 < end else next_start
        start = begin


def _last_sentence_end(text: str, low: int, high: int) -> int | None:
    """The last sentence end in ``(low, high]`` (the break's whitespace starts there)."""
    ends = [end for end, _ in sentence_breaks(text, low + 1, high + 1)]
    return ends[-1] if ends else None


def _first_sentence_start(text: str, low: int, high: int) -> int | None:
    """The first sentence start in ``[low, high)``."""
    for _, begin in sentence_breaks(text, max(0, low - 1), high):
        if low <= begin < high:
            return begin
        if begin >= high:
            return None
    return None


def _last_space(text: str, low: int, high: int) -> int | None:
    for position in range(high, low, -1):
        if text[position - 1].isspace():
            return position
    return None


def _first_space(text: str, low: int, high: int) -> int | None:
    for position in range(low, high):
        if text[position].isspace():
            return position
    return None


def truncate_context(turns: Sequence[Turn], budget_chars: int) -> tuple[Turn, ...]:
    """The latest turns that fit ``budget_chars``, the oldest kept one cut from its start.

    A leading Agent turn is dropped so the conversation still starts with the user, as the format wants.
    """
    kept: list[Turn] = []
    left = budget_chars
    for turn in reversed(turns):
        if left <= 0:
            break
        if len(turn.text) <= left:
            kept.append(turn)
            left -= len(turn.text)
        else:
            kept.append(Turn(turn.speaker, "..." + turn.text[len(turn.text) - left :].lstrip()))
            left = 0
    kept.reverse()
    while kept and kept[0].speaker != "user":
        kept.pop(0)
    return tuple(kept)


class WindowedGuard:
    """Wraps any guard so that no part of a long message goes unchecked (see the module doc)."""

    def __init__(
        self,
        inner: Guard,
        window_chars: int | None = None,
        overlap_chars: int | None = None,
        context_chars: int | None = None,
        *,
        incremental: bool = True,
        sentence_evidence: Mapping[str, float] | None = None,
    ) -> None:
        self.inner = inner
        self._windows: Guard = IncrementalWindows(inner) if incremental else inner
        self.name = inner.name
        declared = getattr(inner, "max_input_chars", None)
        tokens = getattr(inner, "context_tokens", None)
        if window_chars is None:
            if isinstance(declared, int) and declared > 0:
                window_chars = declared
            elif isinstance(tokens, int) and tokens > 0:
                window_chars = tokens * CHARS_PER_TOKEN // 2
            else:
                window_chars = DEFAULT_WINDOW_CHARS
        if overlap_chars is None:
            declared_overlap = getattr(inner, "window_overlap_chars", None)
            overlap_chars = declared_overlap if isinstance(declared_overlap, int) else window_chars // 5
        self.window_chars = window_chars
        self.overlap_chars = overlap_chars
        self.context_chars = window_chars if context_chars is None else context_chars
        if sentence_evidence is None:
            declared_evidence = getattr(inner, "sentence_evidence", None)
            sentence_evidence = declared_evidence if isinstance(declared_evidence, Mapping) else {}
        self.sentence_evidence = {role: float(margin) for role, margin in sentence_evidence.items()}
        self.sentence_context = getattr(inner, "sentence_context", True) is not False

    def __getattr__(self, name: str) -> Any:  # anything else (format, backend...) is the inner guard's
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    def windows_of(self, request: GuardRequest) -> list[GuardRequest]:
        """The requests the inner guard sees for ``request`` (just ``request`` when it fits)."""
        context = request.turns[:-1]
        last = request.turns[-1]
        context_size = sum(len(turn.text) for turn in context)
        if len(last.text) <= self.window_chars and context_size <= self.context_chars:
            return [request]
        context = truncate_context(context, self.context_chars)
        pieces = split_windows(last.text, self.window_chars, self.overlap_chars)
        return [GuardRequest(request.role, (*context, Turn(last.speaker, piece)), request.policy) for piece in pieces]

    def sentences_of(self, request: GuardRequest) -> list[GuardRequest]:
        """The requests that read each sentence of ``request``'s message alone, after its context; none when its
        role has no sentence evidence or the message is one sentence. Without context where the inner guard reads a
        sentence alone (its ``sentence_context`` is false)."""
        if request.role not in self.sentence_evidence:
            return []
        context = truncate_context(request.turns[:-1], self.context_chars) if self.sentence_context else ()
        last = request.turns[-1]
        return [
            GuardRequest(request.role, (*context, Turn(last.speaker, sentence)), request.policy, part="sentence")
            for sentence in readable_sentences(last.text)
        ]

    def check(self, request: GuardRequest) -> Verdict:
        return self.check_batch([request])[0]

    def _read(self, requests: Sequence[GuardRequest]) -> list[Verdict]:
        """The inner guard's verdicts for ``requests``, each distinct one checked once (:func:`check_distinct`)."""
        verdicts = check_distinct(self._windows, requests)
        if len(verdicts) != len(requests):
            raise RuntimeError(f"{self.name} returned {len(verdicts)} verdicts for {len(requests)} requests")
        return verdicts

    def _confirm(
        self, sentences: Sequence[GuardRequest], verdicts: Sequence[Verdict], margins: Sequence[float]
    ) -> list[Verdict]:
        """The sentences' verdicts, each that reads unsafe after context at its margin or more read again without the
        context (all of them in one batch) and replaced by the weaker reading (see the module doc)."""
        again = [
            i
            for i, (sentence, verdict) in enumerate(zip(sentences, verdicts, strict=True))
            if len(sentence.turns) > 1 and verdict.outcome is Outcome.UNSAFE and sentence_margin(verdict) >= margins[i]
        ]
        read = self._read(
            [
                GuardRequest(sentences[i].role, sentences[i].turns[-1:], sentences[i].policy, part="sentence")
                for i in again
            ]
        )
        confirmed = list(verdicts)
        for i, without_context in zip(again, read, strict=True):
            confirmed[i] = weaker_reading(verdicts[i], without_context)
        return confirmed

    def check_batch(self, requests: Sequence[GuardRequest]) -> list[Verdict]:
        plans = [(self.windows_of(request), self.sentences_of(request)) for request in requests]
        flat: list[GuardRequest] = []
        slots: list[int] = []  # where the sentences are in flat
        for windows, sentences in plans:
            flat.extend(windows)
            slots.extend(range(len(flat), len(flat) + len(sentences)))
            flat.extend(sentences)
        verdicts = self._read(flat)
        margins = [self.sentence_evidence[flat[i].role] for i in slots]
        confirmed = self._confirm([flat[i] for i in slots], [verdicts[i] for i in slots], margins)
        for i, verdict in zip(slots, confirmed, strict=True):
            verdicts[i] = verdict
        results: list[Verdict] = []
        position = 0
        for request, (windows, sentences) in zip(requests, plans, strict=True):
            read = verdicts[position : position + len(windows) + len(sentences)]
            position += len(read)
            results.append(self._decide(request.role, read[: len(windows)], read[len(windows) :]))
        return results

    def sentence_verdicts(self, requests: Sequence[GuardRequest]) -> list[list[Verdict]]:
        """The verdicts of each request's sentences read alone (:meth:`sentences_of`), each unsafe one confirmed
        without its context (the weaker reading) as :meth:`check_batch` confirms it at any margin; what a role's
        margin is chosen on (``guardgraph.nodes.training.train``)."""
        plans = [self.sentences_of(request) for request in requests]
        flat = [sentence for plan in plans for sentence in plan]
        verdicts = self._confirm(flat, self._read(flat), [-math.inf] * len(flat))
        out: list[list[Verdict]] = []
        for plan in plans:
            out.append(verdicts[: len(plan)])
            verdicts = verdicts[len(plan) :]
        return out

    def _decide(self, role: str, windows: Sequence[Verdict], sentences: Sequence[Verdict]) -> Verdict:
        """The message's verdict: its windows', and its sentences' that its role's margin lets decide."""
        margin = self.sentence_evidence.get(role, math.inf)
        heard = [i for i, v in enumerate(sentences) if sentence_margin(v) >= margin]
        if len(windows) == 1 and not heard:
            verdict = windows[0]
        else:
            verdict = combine([*windows, *(sentences[i] for i in heard)], windows=len(windows))
            if heard:
                verdict = verdict.with_updates(metadata={**verdict.metadata, "flagged_sentences": heard})
        if sentences:
            verdict = verdict.with_updates(
                latency_ms=sum(v.latency_ms for v in (*windows, *sentences)),
                metadata={**verdict.metadata, "sentences": len(sentences)},
            )
        return verdict

    async def acheck(self, request: GuardRequest) -> Verdict:
        import asyncio

        return await asyncio.to_thread(self.check, request)

    def warm(self, request: GuardRequest) -> None:
        """Warm the inner guard (if it can) with the context its windows of ``request`` will have."""
        warm = getattr(self.inner, "warm", None)
        if warm is not None:
            warm(self.windows_of(request)[0])


def combine(verdicts: Sequence[Verdict], windows: int | None = None) -> Verdict:
    """The worst of several part verdicts; categories merged in order, max score, latency summed. The first
    ``windows`` parts (all by default) are the message's windows, the rest sentences read alone."""
    windows = len(verdicts) if windows is None else windows
    worst_index = max(range(len(verdicts)), key=lambda i: _SEVERITY.get(verdicts[i].outcome, 3))
    worst = verdicts[worst_index]
    categories = []
    seen: set[str] = set()
    for verdict in verdicts:
        if verdict.outcome is worst.outcome:
            for hit in verdict.categories:
                if hit.code not in seen:
                    seen.add(hit.code)
                    categories.append(hit)
    scores = [v.score for v in verdicts if v.score is not None]
    flagged = [i for i, v in enumerate(verdicts[:windows]) if v.outcome is worst.outcome]
    return worst.with_updates(
        categories=tuple(categories),
        score=max(scores) if scores else None,
        latency_ms=sum(v.latency_ms for v in verdicts),
        metadata={**worst.metadata, "windows": windows, "flagged_windows": flagged},
    )


def weaker_reading(in_context: Verdict, without_context: Verdict) -> Verdict:
    """A sentence's verdict from its two readings: undecided when the one without context is, else the one less sure
    that the sentence is unsafe (:func:`sentence_margin`), its latency the two readings'."""
    if without_context.outcome in _UNDECIDED:
        weaker = without_context
    else:
        weaker = min((in_context, without_context), key=sentence_margin)
    return weaker.with_updates(latency_ms=in_context.latency_ms + without_context.latency_ms)


def sentence_margin(verdict: Verdict) -> float:
    """How sure a guard is that a sentence read alone is unsafe, in logits: ``log(p / (1 - p))`` of its
    P(unsafe) when it says unsafe, minus infinity when it says safe; infinity without a score and when it cannot
    decide (so an undecided sentence blocks at any margin: fail closed)."""
    if verdict.outcome in _UNDECIDED:
        return math.inf
    if verdict.outcome is not Outcome.UNSAFE:
        return -math.inf
    if verdict.score is None or verdict.score >= 1.0:
        return math.inf
    if verdict.score <= 0.0:
        return -math.inf
    return math.log(verdict.score / (1.0 - verdict.score))


def check_distinct(guard: Guard, requests: Sequence[GuardRequest]) -> list[Verdict]:
    """``guard.check_batch(requests)``, each distinct request checked once: repeated text (a pasted paragraph,
    a padded message) yields the same windows many times. A repeat's verdict costs no latency of its own."""
    first: dict[tuple[object, ...], int] = {}
    distinct: list[GuardRequest] = []
    slots: list[int] = []
    for request in requests:
        key = (request.role, request.turns, id(request.policy), request.part)
        if key not in first:
            first[key] = len(distinct)
            distinct.append(request)
        slots.append(first[key])
    verdicts = guard.check_batch(distinct) if distinct else []
    if len(verdicts) != len(distinct):
        return verdicts  # the caller reports the mismatch
    seen: set[int] = set()
    out: list[Verdict] = []
    for slot in slots:
        out.append(verdicts[slot] if slot not in seen else verdicts[slot].with_updates(latency_ms=0.0))
        seen.add(slot)
    return out


def windowed(guard: Guard, **options: Any) -> Guard:
    """``guard`` wrapped in a :class:`WindowedGuard` with ``options`` (once: wrapping twice is a no-op)."""
    if isinstance(guard, WindowedGuard):
        return guard
    return WindowedGuard(guard, **options)
