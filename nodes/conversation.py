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


def content_text(content: object) -> str:
    """Plain text of a message's content: a string, or LangChain content blocks of type text."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts: list[str] = []
        for block in content:
            if isinstance(block, str):
                parts.append(block)
            elif isinstance(block, dict) and block.get("type") == "text":
                parts.append(str(block.get("text", "")))
            else:
                kind = block.get("type") if isinstance(block, dict) else type(block).__name__
                raise ConversationError(
                    f"message content of type {kind!r} is not supported: the guards read text only"
                )
        return "\n".join(parts)
    raise ConversationError(f"message content must be text, got {type(content).__name__}")


def turns_from_messages(messages: Sequence[object]) -> tuple[Turn, ...]:
    """LangChain messages (or role/content dicts) to guard turns; system messages are the app's, not checked."""
    turns: list[Turn] = []
    for message in messages:
        if isinstance(message, dict):
            role, content = message.get("role"), message.get("content")
        else:
            role, content = getattr(message, "type", None), getattr(message, "content", None)
        if role in ("human", "user"):
            turns.append(Turn("user", content_text(content)))
        elif role in ("ai", "assistant"):
            turns.append(Turn("assistant", content_text(content)))
        elif role in ("system", "developer"):
            continue
        else:
            raise ConversationError(f"unsupported message role {role!r}: use user or assistant")
    return merge_consecutive(turns)
