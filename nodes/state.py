"""What a turn carries through the graph: the conversation, the draft reply and this turn's verdicts."""

from __future__ import annotations

from typing import Annotated, Any, NotRequired, Protocol, TypedDict

from langchain_core.messages import AnyMessage
from langgraph.channels import UntrackedValue
from langgraph.graph.message import add_messages
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


class GuardedChatState(TypedDict):
    """``messages`` persists per thread; ``verdicts`` are this turn's guard decisions.

    ``draft`` is the reply while the output guard checks it. It lives only in the running turn: it is never
    checkpointed (an ``UntrackedValue``, not even in pending writes) and is not part of the graph's output,
    so a draft the output guard blocks is neither stored nor streamed; only a passed draft becomes a message.
    ``blocked`` is the last guard's decision, ``refused`` says the turn ended with a refusal, and ``error``
    is set when the chat model failed and the turn ended without a reply.
    """

    messages: Annotated[list[AnyMessage], add_messages]
    draft: NotRequired[Annotated[str | None, UntrackedValue(str)]]
    verdicts: NotRequired[Annotated[list[VerdictRecord], turn_verdicts]]
    blocked: NotRequired[bool]
    refused: NotRequired[bool]
    error: NotRequired[str | None]


class GuardedChatInput(TypedDict):
    """What a turn is given: the new message(s)."""

    messages: Annotated[list[AnyMessage], add_messages]


class GuardedChatOutput(TypedDict):
    """What a turn returns and streams (``values``, ``updates``): everything but the unchecked draft."""

    messages: Annotated[list[AnyMessage], add_messages]
    verdicts: NotRequired[Annotated[list[VerdictRecord], turn_verdicts]]
    blocked: NotRequired[bool]
    refused: NotRequired[bool]
    error: NotRequired[str | None]


class StateUpdate(TypedDict, total=False):
    """What a node returns: any subset of the state (``messages`` and ``verdicts`` go through their reducers)."""

    messages: list[AnyMessage]
    draft: str | None
    verdicts: list[VerdictRecord]
    blocked: bool
    refused: bool
    error: str | None


class Node(Protocol):
    """Every node of the graph: this turn's state and the run's runtime in, an update out."""

    def __call__(self, state: GuardedChatState, *, runtime: Runtime[Context]) -> StateUpdate: ...
