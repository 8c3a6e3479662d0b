"""What a turn carries through the graph: the conversation, this turn's verdicts and how the turn ended.

The draft reply is not part of the state: it goes from the chat node to the output guard node through
an in-process handoff (``handoff.py``), so no checkpoint, pending write or stream mode ever carries it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, NotRequired, Protocol, TypedDict, cast

from langchain_core.messages import AnyMessage, BaseMessage
from langgraph.graph.message import Messages, add_messages
from langgraph.runtime import Runtime

from guardgraph.nodes.context import Context

VerdictRecord = dict[str, Any]  # Verdict.to_dict(): JSON-ready, so checkpoints and the server can store it


def turn_verdicts(current: list[VerdictRecord] | None, new: list[VerdictRecord] | None) -> list[VerdictRecord]:
    """The reducer of ``verdicts``: a User verdict starts a new turn's list; later verdicts are appended."""
    if not new:
        return list(current or [])
    if new[0].get("role") == "User":
        return list(new)
    return [*(current or []), *new]


def unanswered(messages: Sequence[BaseMessage]) -> list[BaseMessage]:
    """The user messages at the end of the thread that no reply follows: the input of an unfinished turn."""
    tail: list[BaseMessage] = []
    for message in reversed(messages):
        if message.type != "human":
            break
        tail.append(message)
    return tail[::-1]


def thread_messages(current: Messages, new: Messages) -> list[AnyMessage]:
    """The reducer of ``messages``: :func:`add_messages`, keeping the thread a sequence of finished turns.

    A turn is all or nothing. A turn whose chat model fails removes its own user message (the chat
    node); a turn run by :func:`guardgraph.graph.turns.run_turn` is checkpointed only when it ends, so a
    killed process leaves nothing. A run neither covers (a server worker killed mid-turn) can leave
    user messages that no reply follows: when a new user message arrives, they are dropped here, so the
    thread reads as if the unfinished turn never began and the chat model never gets two user turns in a
    row.
    """
    before = cast(list[AnyMessage], add_messages(current, []))
    merged = cast(list[AnyMessage], add_messages(cast(Messages, before), new))
    stale = {message.id for message in unanswered(before)}
    if not stale:
        return merged
    known = {message.id for message in before}
    if not any(message.type == "human" and message.id not in known for message in merged):
        return merged
    return [message for message in merged if message.id not in stale]


ThreadMessages = Annotated[list[AnyMessage], thread_messages]


class GuardedChatState(TypedDict):
    """``messages`` persists per thread; ``verdicts`` are this turn's guard decisions.

    ``blocked`` is the last guard's decision, ``refused`` says the turn ended with a refusal, and ``error``
    is set when the chat model failed (or the reply was stopped) and the turn ended without a reply.
    """

    messages: ThreadMessages
    verdicts: NotRequired[Annotated[list[VerdictRecord], turn_verdicts]]
    blocked: NotRequired[bool]
    refused: NotRequired[bool]
    error: NotRequired[str | None]


class GuardedChatInput(TypedDict):
    """What a turn is given: the new message(s)."""

    messages: ThreadMessages


class StateUpdate(TypedDict, total=False):
    """What a node returns: any subset of the state (``messages`` and ``verdicts`` go through their reducers)."""

    messages: list[BaseMessage]
    verdicts: list[VerdictRecord]
    blocked: bool
    refused: bool
    error: str | None


class Node(Protocol):
    """Every node of the graph: this turn's state and the run's runtime in, an update out."""

    def __call__(self, state: GuardedChatState, *, runtime: Runtime[Context]) -> StateUpdate: ...
