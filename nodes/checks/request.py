"""What a guard is asked: the conversation as plain (speaker, text) turns, and the one request builder.

:func:`guard_request` builds the request for either role (``User``: the conversation up to the user's
last message; ``Agent``: the conversation plus the assistant's reply) for the graph's guard nodes, the
chunk-by-chunk checks of a streamed reply and ``GuardedChatModel`` alike. :func:`assistant_text` is the
one way an assistant message (its text and its tool calls) becomes text a guard reads.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from guardgraph.nodes.checks.verdict import Role
from guardgraph.policies.model import Policy

Speaker = Literal["user", "assistant"]
# What the last turn is: a whole message, or one sentence of a longer one read alone
# (``guardgraph.nodes.guards.windowed``), which a guard with a reader for single sentences reads with it.
Part = Literal["message", "sentence"]


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
    part: Part = "message"

    def __post_init__(self) -> None:
        if not self.turns:
            raise ConversationError("a guard needs at least one message to check")
        expected: Speaker = "user" if self.role == "User" else "assistant"
        if self.turns[-1].speaker != expected:
            raise ConversationError(
                f"a {self.role} check must end with a {expected} message, got {self.turns[-1].speaker}"
            )
        if not self.turns[-1].text.strip():
            raise ConversationError(f"the {expected} message to check is empty")

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
    keep_all = max_turns is None or max_turns <= 0 or len(turns) <= max_turns
    start = 0 if keep_all else len(turns) - max_turns  # type: ignore[operator]
    while start > 0 and turns[start].speaker != "user":
        start -= 1
    return tuple(turns[start:])


IMAGE_BLOCKS = frozenset({"image", "image_url", "input_image"})
MEDIA_BLOCKS = frozenset({"audio", "input_audio", "video", "file"})
TEXT_BLOCKS = frozenset({"text", "input_text", "output_text"})


def merge_consecutive(turns: Sequence[Turn]) -> tuple[Turn, ...]:
    """Join runs of same-speaker turns so the guard sees strictly alternating User/Agent turns.

    Empty or whitespace-only turns carry nothing to check or to read as context and are dropped, except
    the last one, which stays so that checking it fails with a clear "empty message" error.
    """
    merged: list[Turn] = []
    for position, turn in enumerate(turns):
        if not turn.text.strip() and position < len(turns) - 1:
            continue
        if merged and merged[-1].speaker == turn.speaker:
            parts = [text for text in (merged[-1].text, turn.text) if text.strip()]
            merged[-1] = Turn(turn.speaker, "\n\n".join(parts))
        else:
            merged.append(turn)
    return tuple(merged)


def content_text(content: object) -> str:
    """Plain text of a message's content: a string, or LangChain content blocks of type text.

    Images (and audio, video, files) raise :class:`ConversationError`: the guards read text only, so such
    content is rejected rather than silently skipped past a guard. So is any block type not known to be
    text, and any content that is not a string or a list.
    """
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts: list[str] = []
        for block in content:
            if isinstance(block, str):
                parts.append(block)
                continue
            kind = block.get("type") if isinstance(block, dict) else type(block).__name__
            if isinstance(block, dict) and kind in TEXT_BLOCKS:
                text = block.get("text", "")
                if not isinstance(text, str):
                    raise ConversationError(f"a {kind!r} content block needs a string 'text'")
                parts.append(text)
            elif kind in IMAGE_BLOCKS:
                raise ConversationError("images are not supported by text guards: send text only")
            elif kind in MEDIA_BLOCKS:
                raise ConversationError(f"{kind} content is not supported by text guards: send text only")
            else:
                raise ConversationError(f"message content of type {kind!r} is not supported: the guards read text only")
        return "\n".join(parts)
    if content is None:
        raise ConversationError("message content is missing")
    raise ConversationError(f"message content must be text, got {type(content).__name__}")


def _field(message: object, name: str) -> Any:
    return message.get(name) if isinstance(message, dict) else getattr(message, name, None)


def assistant_text(message: object) -> str:
    """An assistant message as the output guard reads it: its text, then one line per tool call it makes,
    ``[tool call] name({json arguments})``, so a harmful tool call is checked like harmful text."""
    content = _field(message, "content")
    lines = [content_text(content if content is not None else "")]
    for call in _field(message, "tool_calls") or ():
        if isinstance(call, dict):
            args = json.dumps(call.get("args", {}), ensure_ascii=False, sort_keys=True, default=str)
            lines.append(f"[tool call] {call.get('name', '?')}({args})")
    return "\n".join(line for line in lines if line)


def turns_from_messages(messages: Sequence[object]) -> tuple[Turn, ...]:
    """LangChain messages (or role/content dicts) to guard turns: what each guard sees, by role.

    * ``human``/``user`` -> a User turn; ``ai``/``assistant`` -> an Agent turn, with any tool calls it
      makes appended as ``[tool call] name({args})`` lines (so they are checked too).
    * ``tool`` messages (tool results) are part of the Agent turn: their text is merged into the
      surrounding assistant turn as ``[tool result] ...``, so the output guard checks tool output
      together with the reply that follows it.
    * ``system``/``developer`` messages found *in the conversation* are NOT trusted: the app's own
      instructions (``GuardedChatDeps.system_prompt``) are added by the chat node and never stored in
      the state, so any system message here came from the caller. Its text is checked as user-side
      content (merged into the adjacent User turn) rather than skipped, so it cannot carry content past
      the input guard.
    * Runs of same-speaker turns are merged (roles need not alternate); empty turns are dropped; an
      empty last turn, images, unknown block types and unknown roles raise :class:`ConversationError`.
    """
    turns: list[Turn] = []
    for message in messages:
        role = message.get("role") if isinstance(message, dict) else getattr(message, "type", None)
        content = _field(message, "content")
        if role in ("human", "user"):
            turns.append(Turn("user", content_text(content)))
        elif role in ("ai", "assistant"):
            turns.append(Turn("assistant", assistant_text(message)))
        elif role == "tool":
            turns.append(Turn("assistant", f"[tool result] {content_text(content)}"))
        elif role in ("system", "developer"):
            turns.append(Turn("user", content_text(content)))
        else:
            raise ConversationError(f"unsupported message role {role!r}: use user or assistant")
    return merge_consecutive(turns)


def guard_request(
    role: Role,
    messages: Sequence[object],
    policy: Policy,
    window_turns: int | None,
    reply: str | object | None = None,
) -> GuardRequest:
    """The request for ``role``: ``User`` checks the conversation's last (user) message; ``Agent`` checks
    ``reply`` (text, or an assistant message read by :func:`assistant_text`), appended to the conversation
    as the assistant's turn. The last ``window_turns`` turns are kept.

    Raises :class:`ConversationError` for content no guard can check (empty, images, unknown roles).
    """
    turns = turns_from_messages(messages)
    if role == "Agent":
        text = reply if isinstance(reply, str) else assistant_text(reply) if reply is not None else ""
        turns = merge_consecutive((*turns, Turn("assistant", text)))
    return GuardRequest(role, window(turns, window_turns), policy)
