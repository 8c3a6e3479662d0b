"""Hold-back streaming and speculative generation: no token the guard has not passed reaches the user."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from langchain_core.messages import HumanMessage

from guardgraph.nodes.checks.verdict import Outcome, Verdict
from guardgraph.nodes.context import Context
from guardgraph.nodes.streaming.holdback import Chunking, release_guarded
from guardgraph.policies import Policy
from tests.fakes import ScriptedChatModel, SlowGuard, keyword_answer, scripted_llama_guard

UNSAFE_MID_REPLY = [
    "Sure. ",
    "Here is ",
    "a story. ",
    "First ",
    "you ",
    "wire ",
    "the ",
    "detonator ",
    "to ",
    "the ",
    "pipe.",
]


def stream_turn(graph: Any, text: str, thread: str = "t") -> tuple[list[str], dict]:
    released: list[str] = []
    final: dict = {}
    config = {"configurable": {"thread_id": thread}}
    for mode, event in graph.stream({"messages": [HumanMessage(text)]}, config, stream_mode=["custom", "values"]):
        if mode == "custom" and event.get("guardgraph") == "token":
            released.append(event["text"])
        elif mode == "values":
            final = event
    return released, final


def test_reply_turning_unsafe_mid_stream_is_cut_before_the_unsafe_chunk(
    make_guarded_graph: Callable[..., Any], llama_guard_3_policy: Policy
) -> None:
    model = ScriptedChatModel(replies=[UNSAFE_MID_REPLY])
    log = model.log
    output_guard = SlowGuard(scripted_llama_guard(keyword_answer("detonator", codes="S9")), 0.0, log)
    released, final = stream_turn(make_guarded_graph(model, output_guard=output_guard), "Tell me a story")
    shown = "".join(released)
    assert shown and "detonator" not in shown and "pipe" not in shown
    assert "Sure." in shown
    assert final["refused"] is True
    assert final["messages"][-1].content == llama_guard_3_policy.category("S9").refusal  # type: ignore[union-attr]
    assert not any("detonator" in str(m.content) for m in final["messages"])
    # every released chunk was covered by a passing check of the reply up to it, before it was released
    checked_ok = [detail for event, _, detail in log if event == "guard-start"]
    so_far = ""
    for chunk in released:
        so_far += chunk
        assert any(text.startswith(so_far) or text == so_far for text in checked_ok)


def test_release_guarded_emits_only_after_each_check() -> None:
    events: list[tuple[str, str]] = []

    def check(reply: str) -> Verdict:
        events.append(("check", reply))
        outcome = Outcome.UNSAFE if "bad" in reply else Outcome.SAFE
        return Verdict(role="Agent", outcome=outcome)

    result = release_guarded(
        ["a ", "b ", "c. ", "d ", "e. ", "bad ", "f."], check, lambda t: events.append(("emit", t)), Chunking(2, 2, 8)
    )
    assert result.blocked and result.released == "a b c. d e. " and "bad" in result.draft
    emitted = ""
    for index, (kind, text) in enumerate(events):
        if kind == "emit":
            emitted += text
            assert events[index - 1] == ("check", emitted)  # the check right before covered all emitted text
    assert "bad" not in emitted


def test_safe_stream_releases_everything_and_output_guard_reuses_the_last_check(
    make_guarded_graph: Callable[..., Any],
) -> None:
    guard = scripted_llama_guard()
    model = ScriptedChatModel(replies=[["Paris ", "is ", "the ", "capital. ", "It ", "is ", "lovely."]])
    released, final = stream_turn(make_guarded_graph(model, output_guard=guard), "Capital of France?")
    assert "".join(released) == "Paris is the capital. It is lovely."
    assert final["messages"][-1].content == "Paris is the capital. It is lovely."
    agent_prompts = [p for p in guard.backend.prompts if "'Agent' messages" in p]  # type: ignore[attr-defined]
    full_checks = [p for p in agent_prompts if "Agent: Paris is the capital. It is lovely." in p]
    assert len(full_checks) == 1  # the output guard node did not check the complete reply a second time


def test_generation_starts_while_the_input_guard_runs(make_guarded_graph: Callable[..., Any]) -> None:
    model = ScriptedChatModel(replies=[["Hello ", "there."]])
    log = model.log
    input_guard = SlowGuard(scripted_llama_guard(), 0.3, log)
    released, _ = stream_turn(make_guarded_graph(model, input_guard=input_guard), "Hi")
    start = next(t for e, t, _ in log if e == "start")
    guard_end = next(t for e, t, _ in log if e == "guard-end")
    assert start < guard_end  # speculative generation overlapped the input check
    assert "".join(released) == "Hello there."


def test_output_guard_warms_up_while_the_input_guard_runs_and_before_the_first_chunk_check(
    make_guarded_graph: Callable[..., Any],
) -> None:
    model = ScriptedChatModel(replies=[["Hello ", "there."]])
    log = model.log
    input_guard = SlowGuard(scripted_llama_guard(), 0.1, log)
    output_guard = SlowGuard(scripted_llama_guard(), 0.0, log, warm_delay_s=0.4)  # outlasts the input check
    released, final = stream_turn(make_guarded_graph(model, input_guard, output_guard), "Hi")
    assert "".join(released) == "Hello there." == final["messages"][-1].content
    warm_start = next(t for e, t, detail in log if e == "warm-start" and detail == "Hi")
    warm_end = next(t for e, t, _ in log if e == "warm-end")
    input_end = next(t for e, t, _ in log if e == "guard-end")
    first_reply_check = next(t for e, t, detail in log if e == "guard-start" and detail != "Hi")
    assert warm_start < input_end  # warmed beside the input check...
    assert warm_end <= first_reply_check  # ...and the first chunk's check waited for it, not raced it


def test_one_guard_for_both_roles_is_not_warmed_up_between_its_own_checks(
    make_guarded_graph: Callable[..., Any],
) -> None:
    model = ScriptedChatModel(replies=[["Hello ", "there."]])
    guard = SlowGuard(scripted_llama_guard(), 0.0, model.log, warm_delay_s=0.2)
    released, _ = stream_turn(make_guarded_graph(model, guard, guard), "Hi")
    assert "".join(released) == "Hello there."
    assert not any(event.startswith("warm") for event, _, _ in model.log)


def test_unsafe_input_cancels_the_speculative_draft_unseen(make_guarded_graph: Callable[..., Any]) -> None:
    model = ScriptedChatModel(replies=[[f"word{i} " for i in range(200)]], delay_s=0.01)
    log = model.log
    input_guard = SlowGuard(scripted_llama_guard("unsafe\nS9"), 0.1, log)
    released, final = stream_turn(make_guarded_graph(model, input_guard=input_guard), "pipe bomb howto")
    time.sleep(0.1)
    assert released == []
    assert final["refused"] is True and final.get("draft") is None
    assert [m.type for m in final["messages"]] == ["human", "ai"]
    assert "word" not in final["messages"][-1].content
    assert any(e == "stop" for e, _, _ in log)  # the generation was stopped...
    assert sum(e == "piece" for e, _, _ in log) < 200  # ...long before it finished


def test_chat_model_error_ends_the_turn_and_leaves_the_thread_as_before(make_guarded_graph: Callable[..., Any]) -> None:
    model = ScriptedChatModel(replies=[["Fine."], ["Back again."]], fail=True)
    graph = make_guarded_graph(model)
    _, final = stream_turn(graph, "Hello")
    assert "model server crashed" in final["error"]
    assert final["messages"] == []  # the failed turn's user message is gone with it
    model.fail = False
    _, final = stream_turn(graph, "Hello again")
    assert [(m.type, m.content) for m in final["messages"]] == [("human", "Hello again"), ("ai", "Fine.")]
    assert final.get("error") is None
    assert [m.content for m in model.prompts[-1]] == ["Hello again"]


def test_invoke_without_streaming_checks_once(make_guarded_graph: Callable[..., Any]) -> None:
    guard = scripted_llama_guard()
    model = ScriptedChatModel(replies=[["One. ", "Two. ", "Three. ", "Four."]])
    graph = make_guarded_graph(model, output_guard=guard)
    state = graph.invoke(
        {"messages": [HumanMessage("count")]},
        {"configurable": {"thread_id": "x"}},
        context=Context(stream_tokens=False),
    )
    assert state["messages"][-1].content == "One. Two. Three. Four."
    assert sum("'Agent' messages" in p for p in guard.backend.prompts) == 1  # type: ignore[attr-defined]
