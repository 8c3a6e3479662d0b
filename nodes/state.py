"""The graph's state: the conversation, this turn's draft reply and this turn's guard verdicts."""

from __future__ import annotations

from typing import Annotated, Any, NotRequired, TypedDict

from langchain_core.messages import AnyMessage
from langgraph.graph.message import add_messages


class GuardedChatState(TypedDict):
    """``messages`` persists per thread; ``draft`` holds a reply no guard has passed yet (never shown).

    ``error`` is set when the chat model failed and the turn ended without a reply.
    """

    messages: Annotated[list[AnyMessage], add_messages]
    draft: NotRequired[str | None]
    verdicts: NotRequired[list[dict[str, Any]]]
    blocked: NotRequired[bool]
    refused: NotRequired[bool]
    error: NotRequired[str | None]
