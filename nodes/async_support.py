"""Async node variants that never block the event loop.

LangGraph runs a plain function node inline: under ``ainvoke``/``astream`` (and inside the LangGraph
server, which is async) a guard or chat model call made by a sync node would block the whole event
loop for its duration. :func:`dual` turns a sync node into a runnable with both paths: the sync path
calls the function as-is, the async path runs it in a worker thread with ``asyncio.to_thread``.
``to_thread`` copies the current context, so the run's config and callbacks (``stream_mode="messages"``
token streaming, tracing) reach the models inside the node unchanged.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from typing import Any

from langchain_core.runnables import RunnableLambda

NodeFn = Callable[[dict[str, Any]], dict[str, Any]]


def dual(sync_fn: NodeFn, name: str | None = None) -> RunnableLambda:
    """``sync_fn`` as a node whose async path runs it off the event loop.

    ``builder.add_node("chat", dual(make_chat_node(model)))``: ``invoke``/``stream``/``batch`` call
    ``sync_fn`` directly; ``ainvoke``/``astream``/``abatch`` await it in a thread.
    """

    @functools.wraps(sync_fn)
    async def async_fn(state: dict[str, Any]) -> dict[str, Any]:
        return await asyncio.to_thread(sync_fn, state)

    return RunnableLambda(sync_fn, afunc=async_fn, name=name or getattr(sync_fn, "__name__", None))
