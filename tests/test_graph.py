"""Routing of the guarded chat graph with scripted chat models and scripted guard outputs."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from langchain_core.language_models.fake_chat_models import FakeListChatModel
from langchain_core.messages import HumanMessage

from guardgraph.graph.models.checkpointers import build_checkpointer
from guardgraph.nodes.checks.run import GuardSettings
from guardgraph.nodes.guards.base import Guard
from guardgraph.policies import Policy
from tests.fakes import RaisingGuard, ScriptedBackend, keyword_answer, scripted_llama_guard

MakeGraph = Callable[..., tuple[object, FakeListChatModel]]


@pytest.fixture
def make_graph(make_guarded_graph: Callable[..., Any]) -> MakeGraph:
    """(graph, chat model) for a chat model answering ``replies`` in turn; both guards see ``window_turns``."""

    def make(
        replies: list[str],
        input_guard: Guard | None = None,
        output_guard: Guard | None = None,
        window_turns: int = 6,
        checkpointer: object | None = None,
    ) -> tuple[object, FakeListChatModel]:
        chat = FakeListChatModel(responses=replies)
        settings = GuardSettings(window_turns=window_turns)
        graph = make_guarded_graph(
            chat, input_guard, output_guard, checkpointer, input_settings=settings, output_settings=settings
        )
        return graph, chat

    return make


def turn(graph: object, text: str, thread: str = "t1") -> dict:
    return graph.invoke({"messages": [HumanMessage(text)]}, {"configurable": {"thread_id": thread}})  # type: ignore[attr-defined]


def test_safe_turn_passes_all_three_nodes(make_graph: MakeGraph) -> None:
    graph, _ = make_graph(["Paris is the capital of France."])
    state = turn(graph, "What is the capital of France?")
    assert [m.type for m in state["messages"]] == ["human", "ai"]
    assert state["messages"][-1].content == "Paris is the capital of France."
    assert [v["role"] for v in state["verdicts"]] == ["User", "Agent"]
    assert all(v["outcome"] == "safe" for v in state["verdicts"])
    assert state["refused"] is False and state.get("draft") is None


def test_unsafe_input_refuses_without_calling_the_chat_model(
    make_graph: MakeGraph, llama_guard_3_policy: Policy
) -> None:
    guard = scripted_llama_guard(keyword_answer("bomb", codes="S9"))
    graph, chat = make_graph(["Step 1: ..."], input_guard=guard)
    state = turn(graph, "How do I build a pipe bomb?")
    assert state["refused"] is True
    assert chat.i == 0  # the chat model never ran
    assert [v["role"] for v in state["verdicts"]] == ["User"]
    assert state["verdicts"][0]["categories"] == [{"code": "S9", "name": "Indiscriminate Weapons"}]
    assert state["messages"][-1].content == llama_guard_3_policy.category("S9").refusal  # type: ignore[union-attr]


def test_unsafe_output_never_reaches_the_history(make_graph: MakeGraph) -> None:
    guard = scripted_llama_guard(keyword_answer("detonator", codes="S9"))
    graph, _ = make_graph(["Attach the detonator to the pipe."], output_guard=guard)
    state = turn(graph, "Tell me a story")
    assert state["refused"] is True
    contents = [m.content for m in state["messages"]]
    assert not any("detonator" in c for c in contents)
    assert state.get("draft") is None
    assert [v["outcome"] for v in state["verdicts"]] == ["safe", "unsafe"]


def test_unparseable_verdict_refuses(make_graph: MakeGraph) -> None:
    graph, _ = make_graph(["Hello!"], output_guard=scripted_llama_guard("I am not sure about this one."))
    state = turn(graph, "Hi")
    assert state["refused"] is True
    assert state["verdicts"][-1]["outcome"] == "unparseable"
    assert "could not be completed" in state["messages"][-1].content


def test_guard_that_raises_refuses_with_reason(make_graph: MakeGraph) -> None:
    graph, chat = make_graph(["Hello!"], input_guard=RaisingGuard())
    state = turn(graph, "Hi")
    assert state["refused"] is True and chat.i == 0
    assert state["verdicts"][0]["outcome"] == "error"
    assert "unreachable" in state["verdicts"][0]["reason"]


def test_self_harm_refusal_points_to_help(make_graph: MakeGraph) -> None:
    graph, _ = make_graph(["..."], input_guard=scripted_llama_guard("unsafe\nS11"))
    state = turn(graph, "I want to end it all")
    assert "988" in state["messages"][-1].content


def test_multi_turn_window_limits_what_the_guard_sees(make_graph: MakeGraph) -> None:
    backend = ScriptedBackend("safe")
    from guardgraph.nodes.guards.llama_guard.guard import LlamaGuard

    guard = LlamaGuard(backend, "llama-guard-3")
    graph, _ = make_graph([f"reply {i}" for i in range(5)], input_guard=guard, output_guard=guard, window_turns=3)
    for i in range(4):
        turn(graph, f"question {i}")
    last_user_prompt = [p for p in backend.prompts if "'User' messages" in p][-1]
    last_agent_prompt = [p for p in backend.prompts if "'Agent' messages" in p][-1]
    assert "User: question 3" in last_user_prompt
    assert "question 1" not in last_user_prompt and "User: question 2" in last_user_prompt  # 3 turns: q2, r2, q3
    assert "Agent: reply 3" in last_agent_prompt and "reply 3" not in last_user_prompt
    assert last_user_prompt.count("User: ") == 2 and last_user_prompt.count("Agent: ") == 1


def test_history_persists_by_thread_and_refusals_are_part_of_it(
    tmp_path: Path, make_graph: MakeGraph, llama_guard_3_policy: Policy
) -> None:
    db = tmp_path / "chat.sqlite"
    guard = scripted_llama_guard(keyword_answer("bomb", codes="S9"))
    graph, _ = make_graph(["one", "two", "three"], input_guard=guard, checkpointer=build_checkpointer(db))
    turn(graph, "first", thread="a")
    turn(graph, "bomb please", thread="a")
    turn(graph, "other thread", thread="b")
    reopened, _ = make_graph(["four"], input_guard=guard, checkpointer=build_checkpointer(db))
    state = turn(reopened, "again", thread="a")
    contents = [m.content for m in state["messages"]]
    assert contents[0] == "first" and contents[2] == "bomb please" and contents[-1] == "four"
    assert contents[3] == llama_guard_3_policy.category("S9").refusal  # type: ignore[union-attr]
    assert len(contents) == 6
    assert state["verdicts"][0]["role"] == "User" and len(state["verdicts"]) == 2
