"""The conversation a guard looks at: plain (role, text) turns and the request built from them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from nodes.verdict import Role
from policies.model import Policy

Speaker = Literal["user", "assistant"]


class ConversationError(ValueError):
    """A conversation a guard cannot check as given (empty, wrong roles, unsupported content)."""


@dataclass(frozen=True)
class Turn:
    """One message of the conversation, as text."""

    speaker: Speaker
    text: str


@dataclass(frozen=True)
class GuardRequest:
    """What a guard is asked: is the last turn (by ``role``) safe under ``policy``, given the earlier turns."""

    role: Role
    turns: tuple[Turn, ...]
    policy: Policy

    def __post_init__(self) -> None:
        if not self.turns:
            raise ConversationError("a guard needs at least one message to check")
        expected: Speaker = "user" if self.role == "User" else "assistant"
        if self.turns[-1].speaker != expected:
            raise ConversationError(
                f"a {self.role} check must end with a {expected} message, got {self.turns[-1].speaker}"
            )

    @property
    def checked_text(self) -> str:
        return self.turns[-1].text


def role_of_last(turns: Sequence[Turn]) -> Role:
    """The guard role for a conversation: ``User`` if the user spoke last, else ``Agent``."""
    if not turns:
        raise ConversationError("the conversation is empty")
    return "User" if turns[-1].speaker == "user" else "Agent"


def window(turns: Sequence[Turn], max_turns: int | None) -> tuple[Turn, ...]:
    """The last ``max_turns`` turns, widened so that the window starts with a user turn."""
    if max_turns is None or max_turns <= 0 or len(turns) <= max_turns:
        start = 0
    else:
        start = len(turns) - max_turns
    while start > 0 and turns[start].speaker != "user":
        start -= 1
    return tuple(turns[start:])


def merge_consecutive(turns: Sequence[Turn]) -> tuple[Turn, ...]:
    """Join runs of same-speaker turns so the guard sees strictly alternating User/Agent turns."""
    merged: list[Turn] = []
    for turn in turns:
        if merged and merged[-1].speaker == turn.speaker:
            merged[-1] = Turn(turn.speaker, f"{merged[-1].text}\n\n{turn.text}")
        else:
            merged.append(turn)
    return tuple(merged)
