"""A guard's decision about one message, as one small immutable record."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from enum import StrEnum
from typing import Any, Literal

Role = Literal["User", "Agent"]
# Which part of a guard flagged content: the guard model, the policy's examples (``guards/examples.py``), both.
FlaggedBy = Literal["guard", "examples", "both"]
BAD_INPUT = "input_error"  # metadata flag: the content itself could not be checked (no mode lets it through)
# The most of a guard's raw answer and of a reason a verdict keeps: verdicts are stored in the thread, written
# to the audit log and printed, and a broken guard may answer megabytes.
TEXT_LIMIT = 2000


def capped(text: str | None, limit: int = TEXT_LIMIT) -> str | None:
    """``text`` in at most ``limit`` characters: cut, when longer, with a marker saying how long it was."""
    if text is None or len(text) <= limit:
        return text
    marker = f"... [cut: {len(text)} characters in all]"
    return text[: limit - len(marker)] + marker


class Outcome(StrEnum):
    """What a guard concluded. Only SAFE and BYPASS let content through."""

    SAFE = "safe"
    UNSAFE = "unsafe"
    UNPARSEABLE = "unparseable"
    ERROR = "error"
    BYPASS = "bypass"


@dataclass(frozen=True)
class CategoryHit:
    """A violated category, with the name the policy gives its code."""

    code: str
    name: str


@dataclass(frozen=True)
class Verdict:
    """One guard decision; ``blocks`` is the only thing routing needs to know."""

    role: Role
    outcome: Outcome
    categories: tuple[CategoryHit, ...] = ()
    score: float | None = None
    latency_ms: float = 0.0
    guard: str = ""
    raw: str | None = None
    reason: str | None = None
    enforced: bool = True
    flagged_by: FlaggedBy | None = None
    metadata: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "raw", capped(self.raw))
        object.__setattr__(self, "reason", capped(self.reason))

    @property
    def blocks(self) -> bool:
        """True when the checked content must not reach the user (fail closed)."""
        return self.enforced and self.outcome not in (Outcome.SAFE, Outcome.BYPASS)

    @property
    def safe(self) -> bool:
        return self.outcome is Outcome.SAFE

    @property
    def codes(self) -> list[str]:
        return [hit.code for hit in self.categories]

    def with_updates(self, **changes: Any) -> Verdict:
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready record for graph state, the CLI and the audit log."""
        data = asdict(self)
        data["outcome"] = self.outcome.value
        data["categories"] = [asdict(hit) for hit in self.categories]
        if not data["metadata"]:
            del data["metadata"]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Verdict:
        fields = dict(data)
        fields["outcome"] = Outcome(fields["outcome"])
        fields["categories"] = tuple(CategoryHit(**hit) for hit in fields.get("categories", ()))
        return cls(**fields)


def undecided_verdict(
    role: Role, guard: str, reason: str, *, latency_ms: float = 0.0, bad_input: bool = False
) -> Verdict:
    """The verdict of a check that could not decide: ERROR, which blocks (fail closed).

    ``bad_input``: the content itself cannot be checked (empty, images, unknown roles); fail-open and shadow
    modes never let such content through.
    """
    metadata = {BAD_INPUT: True} if bad_input else {}
    return Verdict(
        role=role, outcome=Outcome.ERROR, guard=guard, reason=reason, latency_ms=latency_ms, metadata=metadata
    )
