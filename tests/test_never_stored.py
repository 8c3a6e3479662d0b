"""A draft the output guard blocks is never shown and never stored: in no checkpoint of the history, no
pending write, no table row, no byte of the SQLite file, no stream mode; whichever checkpointer and
durability, whether the reply was blocked whole or in the middle of its stream.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import HumanMessage
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.checkpoint.memory import InMemorySaver
from typer.testing import CliRunner

from guardgraph.graph.cli.app import app
from guardgraph.graph.models.checkpointers import build_checkpointer
from guardgraph.nodes.context import Context
from guardgraph.policies import Policy
from tests.fakes import FakeOpenAIServer, ScriptedChatModel, keyword_answer, scripted_llama_guard
from tests.storage import file_text, stored_text

DRAFT_WORD = "detonator"  # only ever in the blocked draft
SAFE_REPLY = ["Why did the chicken ", "cross the road?"]
# Released up to "Sure. ", then blocked: the second chunk holds the word the output guard flags.
BLOCKED_REPLY = ["Sure. ", "First ", "you ", "take ", "the ", f"{DRAFT_WORD} ", "and ", "wire ", "it."]
ALL_STREAM_MODES = ["values", "updates", "custom", "messages", "debug", "tasks", "checkpoints"]


def two_turns_graph(make_guarded_graph: Callable[..., Any], checkpointer: BaseCheckpointSaver) -> Any:
    model = ScriptedChatModel(replies=[SAFE_REPLY, BLOCKED_REPLY])
    output_guard = scripted_llama_guard(keyword_answer(DRAFT_WORD, codes="S9"))
    return make_guarded_graph(model, output_guard=output_guard, checkpointer=checkpointer)


@pytest.mark.parametrize("durability", ["sync", "async", "exit"])
@pytest.mark.parametrize("streamed", [True, False], ids=["blocked-mid-stream", "blocked-whole"])
@pytest.mark.parametrize("store", ["memory", "sqlite"])
def test_a_blocked_draft_is_stored_nowhere(
    make_guarded_graph: Callable[..., Any],
    llama_guard_3_policy: Policy,
    tmp_path: Path,
    store: str,
    streamed: bool,
    durability: str,
) -> None:
    db = tmp_path / "threads.sqlite"
    saver = build_checkpointer(db if store == "sqlite" else None)
    graph = two_turns_graph(make_guarded_graph, saver)
    config = {"configurable": {"thread_id": "t"}}
    for text in ("Tell me a joke", "Now tell me how to build it"):
        list(
            graph.stream(
                {"messages": [HumanMessage(text)]},
                config,
                context=Context(stream_tokens=streamed),
                stream_mode="values",
                durability=durability,
            )
        )
    refusal = llama_guard_3_policy.category("S9").refusal
    assert refusal and graph.get_state(config).values["messages"][-1].content == refusal
    everything = stored_text(saver)
    # the reader reads what was stored: both user messages, the first reply and the refusal...
    assert all(text in everything for text in ("Tell me a joke", "Now tell me how to build it", "cross the road"))
    assert refusal in everything
    # ...and the blocked draft is nowhere
    assert DRAFT_WORD not in everything
    if store == "sqlite":
        assert DRAFT_WORD not in file_text(db)


@pytest.mark.parametrize("streamed", [True, False], ids=["blocked-mid-stream", "blocked-whole"])
def test_a_blocked_draft_is_streamed_in_no_mode(
    make_guarded_graph: Callable[..., Any], llama_guard_3_policy: Policy, streamed: bool
) -> None:
    model = ScriptedChatModel(replies=[BLOCKED_REPLY])
    output_guard = scripted_llama_guard(keyword_answer(DRAFT_WORD, codes="S9"))
    graph = make_guarded_graph(model, output_guard=output_guard, checkpointer=InMemorySaver())
    events = list(
        graph.stream(
            {"messages": [HumanMessage("How do I build it?")]},
            {"configurable": {"thread_id": "t"}},
            context=Context(stream_tokens=streamed),
            stream_mode=ALL_STREAM_MODES,
            subgraphs=True,
        )
    )
    modes = {mode for _, mode, _ in events}
    assert modes >= {"values", "updates", "messages", "debug", "tasks", "checkpoints"} | (
        {"custom"} if streamed else set()
    )
    streamed_text = repr(events)
    assert llama_guard_3_policy.category("S9").refusal in streamed_text
    assert "output_guard" in streamed_text  # the tasks and debug events of the node that decided on the draft
    assert DRAFT_WORD not in streamed_text


def test_through_the_cli_a_blocked_draft_is_shown_and_stored_nowhere(
    fake_openai: FakeOpenAIServer, tmp_path: Path
) -> None:
    """``ask`` blocks the whole reply, ``chat`` blocks it in the middle of its stream; the SQLite file keeps
    the conversation, the refusals and nothing of either draft."""
    fake_openai.guard = keyword_answer(DRAFT_WORD, codes="S9")
    fake_openai.reply = BLOCKED_REPLY
    db = tmp_path / "chats.sqlite"
    options = [*fake_openai.cli_options(), "--db", str(db), "--thread", "alice"]
    asked = CliRunner().invoke(app, ["ask", "How do I build it?", *options])
    chatted = CliRunner().invoke(app, ["chat", *options], input="And the next step?\n/exit\n")
    assert asked.exit_code == 0 and chatted.exit_code == 0, asked.output + chatted.output
    assert "Sure." in chatted.stdout  # the chunk that passed was shown...
    assert DRAFT_WORD not in asked.output + chatted.output  # ...the blocked rest never
    everything = stored_text(build_checkpointer(db))
    assert "How do I build it?" in everything and "And the next step?" in everything
    assert DRAFT_WORD not in everything and DRAFT_WORD not in file_text(db)
