"""Read a Llama Guard completion into an outcome and the policy's categories (every version)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from guardgraph.nodes.checks.verdict import CategoryHit, Outcome
from guardgraph.policies.model import Policy

END_MARKERS = ("<|eot_id|>", "<|end_of_text|>", "<|eot|>", "<|end_of_turn|>", "</s>", "<|im_end|>")
CODE_TOKEN = re.compile(r"^([A-Za-z]|0)?\s*(\d{1,3})$")


@dataclass(frozen=True)
class ParsedVerdict:
    """The verdict text, understood; ``reason`` says why when it is not safe or unsafe."""

    outcome: Outcome
    categories: tuple[CategoryHit, ...] = ()
    reason: str | None = None


def _clean(text: str) -> str:
    for marker in END_MARKERS:
        text = text.replace(marker, "\n")
    return text.strip()


def _code_letter(policy: Policy) -> str:
    letters = {category.code[0] for category in policy.categories}
    return letters.pop() if len(letters) == 1 else ""


def _normalize_code(token: str, letter: str) -> str | None:
    """``S1`` -> S1, ``s1`` -> S1, ``07`` -> O7 (a zero typed for the letter O), ``3`` -> S3 in an S policy."""
    match = CODE_TOKEN.match(token.strip().rstrip("."))
    if not match:
        return None
    prefix, number = match.group(1), str(int(match.group(2)))
    if prefix is None or prefix == "0":
        if not letter:
            return None
        return f"{letter}{number}" if prefix is None else f"O{number}"
    return f"{prefix.upper()}{number}"


def parse_verdict(text: str, policy: Policy) -> ParsedVerdict:
    """``safe`` / ``unsafe\\nS1,S2`` -> an outcome; anything else (``safe`` followed by more text, such as
    category codes, included) is UNPARSEABLE, never safe."""
    cleaned = _clean(text)
    if not cleaned:
        return ParsedVerdict(Outcome.UNPARSEABLE, reason="the guard returned no text")
    first, _, rest = cleaned.partition("\n")
    word = first.strip().lower()
    if word == "safe":
        # Llama Guard writes nothing after "safe": more (such as category codes) contradicts it.
        extra = rest.strip()
        if extra:
            return ParsedVerdict(Outcome.UNPARSEABLE, reason=f"the guard said 'safe' and then wrote {extra[:80]!r}")
        return ParsedVerdict(Outcome.SAFE)
    if word != "unsafe":
        return ParsedVerdict(Outcome.UNPARSEABLE, reason=f"expected 'safe' or 'unsafe', got {first[:80]!r}")
    code_line = rest.strip().split("\n", 1)[0]
    if not code_line:
        return ParsedVerdict(Outcome.UNSAFE, reason="the guard named no category")
    letter = _code_letter(policy)
    hits: list[CategoryHit] = []
    unknown: list[str] = []
    for token in re.split(r"[,;\s]+", code_line.strip()):
        if not token:
            continue
        code = _normalize_code(token, letter)
        category = policy.category(code) if code else None
        if category is None:
            unknown.append(token)
        elif all(hit.code != category.code for hit in hits):
            hits.append(CategoryHit(category.code, category.name))
    if unknown:
        return ParsedVerdict(
            Outcome.UNPARSEABLE,
            tuple(hits),
            reason=f"the guard named codes the policy does not have: {', '.join(unknown)}",
        )
    return ParsedVerdict(Outcome.UNSAFE, tuple(hits))
