"""One turn of the guarded graph, all or nothing: what the CLI runs, and the way for an app to run turns.

A turn is checkpointed once, when it ends (``durability="exit"``), so a process killed mid-turn leaves
the thread as it was before the turn. A turn that ends without a reply (the chat model failed, or the
reply was stopped) removes its own user message (the chat node). What another runner leaves behind (a
server worker killed mid-turn) is repaired when the next user message arrives
(``guardgraph.nodes.state.thread_messages``). So a thread only ever holds finished turns.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from langchain_core.messages import HumanMessage

from guardgraph.graph.builder import GuardedChatGraph
from guardgraph.nodes.chat import TOKEN_EVENT
from guardgraph.nodes.checks.request import ConversationError
from guardgraph.nodes.context import Context


def run_turn(
    graph: GuardedChatGraph,
    text: str,
    thread: str,
    *,
    on_text: Callable[[str], None] | None = None,
    context: Context | None = None,
) -> dict[str, Any]:
    """Run the user message ``text`` through ``graph`` on ``thread``; return the turn's final state.

    With ``on_text`` the reply streams: each chunk is handed to it only after the output guard passed it.
    Without, the output guard checks the complete reply once. ``state["error"]`` says why a turn ended
    without a reply; the thread is then as it was before.
    """
    if not text.strip():
        raise ConversationError("the message is empty")
    run_context = (context or Context()).model_copy(update={"stream_tokens": on_text is not None})
    final: dict[str, Any] = {}
    for mode, event in graph.stream(
        {"messages": [HumanMessage(text)]},
        {"configurable": {"thread_id": thread}},
        context=run_context,
        stream_mode=["custom", "values"],
        durability="exit",
    ):
        if mode == "custom" and isinstance(event, dict) and event.get("guardgraph") == TOKEN_EVENT:
            if on_text is not None:
                on_text(event["text"])
        elif mode == "values" and isinstance(event, dict):
            final = event
    return final
