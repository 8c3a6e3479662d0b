"""The chat node: the injected chat model writes a draft reply, which is not yet part of the history."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import BaseMessage, SystemMessage

from nodes.conversation import content_text


def make_chat_node(
    model: BaseChatModel, system_prompt: str | None = None
) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """The draft goes to ``state['draft']``; only the output guard moves it into ``messages``."""

    def chat(state: dict[str, Any]) -> dict[str, Any]:
        messages: list[BaseMessage] = list(state["messages"])
        if system_prompt:
            messages = [SystemMessage(system_prompt), *messages]
        reply = model.invoke(messages)
        return {"draft": content_text(reply.content)}

    return chat
