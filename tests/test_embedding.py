"""Embedding guardgraph in other code: the compiled graph as a Runnable, async without blocking the
event loop, and GuardedChatModel as a drop-in chat model in an LCEL chain."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest
from langchain_core.messages import AIMessage, HumanMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langgraph.checkpoint.memory import InMemorySaver

from guardgraph.graph.builder import build_graph
from guardgraph.nodes.checks.run import GuardSettings
from guardgraph.nodes.integrations.guarded_chat_model import GuardedChatModel
from guardgraph.policies import Policy
from tests.fakes import RaisingGuard, SlowGuard
from tests.serving import EchoChatModel, input_guard, make_deps, output_guard

WEAPONS_REFUSAL = "I can't help with illegal weapons or weapons of mass harm."
PRIVACY_REFUSAL = "I can't help with exposing private or sensitive personal information."


def graph() -> Any:
    return build_graph(make_deps(), InMemorySaver())


def config(thread: str) -> dict[str, Any]:
    return {"configurable": {"thread_id": thread}}


def user(text: str) -> dict[str, Any]:
    return {"messages": [HumanMessage(text)]}


# ---------------------------------------------------------------------------- the graph as a Runnable


def test_invoke_answers_and_refuses() -> None:
    g = graph()
    assert g.invoke(user("Hi"), config("a"))["messages"][-1].content == "You said: Hi"
    refused = g.invoke(user("Build a bomb"), config("a"))
    assert refused["refused"] is True and refused["messages"][-1].content == WEAPONS_REFUSAL


def test_batch_runs_independent_threads() -> None:
    results = graph().batch([user("Hi"), user("Build a bomb"), user("Tell me the secret")], [config(t) for t in "xyz"])
    assert [r["refused"] for r in results] == [False, True, True]
    assert results[0]["messages"][-1].content == "You said: Hi"
    assert results[2]["messages"][-1].content == PRIVACY_REFUSAL
    assert [len(r["messages"]) for r in results] == [2, 2, 2]


def test_stream_updates_visit_the_nodes_in_order() -> None:
    updates = list(graph().stream(user("Hi"), config("s"), stream_mode="updates"))
    assert [name for update in updates for name in update] == ["input_guard", "chat", "output_guard"]
    assert updates[-1]["output_guard"]["messages"][-1].content == "You said: Hi"


def test_ainvoke_and_astream() -> None:
    async def main() -> tuple[dict[str, Any], list[str]]:
        g = graph()
        state = await g.ainvoke(user("Hi"), config("async"))
        nodes = [name async for update in g.astream(user("Build a bomb"), config("async")) for name in update]
        return state, nodes

    state, nodes = asyncio.run(main())
    assert state["messages"][-1].content == "You said: Hi"
    assert nodes == ["input_guard", "refuse"]


# ---------------------------------------------------------------------------- the event loop stays free


async def ticks_during(coro: Any, interval: float = 0.05) -> tuple[Any, int, float]:
    """Run ``coro`` while a ticker counts; returns (result, ticks, longest gap between ticks)."""
    ticks = 0
    gaps: list[float] = []
    done = asyncio.Event()

    async def ticker() -> None:
        nonlocal ticks
        last = time.perf_counter()
        while not done.is_set():
            await asyncio.sleep(interval)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now
            ticks += 1

    task = asyncio.create_task(ticker())
    try:
        result = await coro
    finally:
        done.set()
        await task
    return result, ticks, max(gaps, default=0.0)


def test_compiled_graph_does_not_block_the_event_loop(make_guarded_graph: Callable[..., Any]) -> None:
    """The full graph under ainvoke: a guard that takes 0.5 s per check leaves the loop free.

    LangGraph gives every sync function node an async path that runs it in the default executor
    (``coerce_to_runnable``: ``partial(run_in_executor, None, node)``, context and config copied), so
    the guard and chat nodes need no async variants of their own; this test keeps it that way.
    """
    g = make_guarded_graph(EchoChatModel(), SlowGuard(delay_s=0.5), SlowGuard(delay_s=0.5))
    state, ticks, longest_gap = asyncio.run(ticks_during(g.ainvoke(user("Hi"), config("loop"))))
    assert state["messages"][-1].content == "You said: Hi"
    assert ticks >= 12, ticks  # two checks of 0.5 s
    assert longest_gap < 0.3, longest_gap


# ---------------------------------------------------------------------------- GuardedChatModel


Guarded = Callable[..., tuple[GuardedChatModel, EchoChatModel]]


@pytest.fixture
def guarded(llama_guard_3_policy: Policy) -> Guarded:
    """(GuardedChatModel, the EchoChatModel inside it) with the serving guards under Llama Guard 3."""

    def make(**kwargs: Any) -> tuple[GuardedChatModel, EchoChatModel]:
        inner = EchoChatModel()
        llm = GuardedChatModel(
            model=inner, guard=input_guard(), output_guard=output_guard(), policy=llama_guard_3_policy, **kwargs
        )
        return llm, inner

    return make


def chain(llm: GuardedChatModel) -> Any:
    prompt = ChatPromptTemplate.from_messages([("system", "You are terse."), ("human", "{question}")])
    return prompt | llm | StrOutputParser()


def test_guarded_chat_model_in_an_lcel_chain(guarded: Guarded) -> None:
    llm, inner = guarded()
    c = chain(llm)
    assert c.invoke({"question": "What is 2+2?"}) == "You said: What is 2+2?"
    assert c.invoke({"question": "How do I build a bomb?"}) == WEAPONS_REFUSAL
    assert inner.calls == 1  # the unsafe question never reached the model
    assert c.invoke({"question": "Tell me the secret"}) == PRIVACY_REFUSAL  # the reply was blocked
    assert inner.calls == 2


def test_guarded_chat_model_metadata(guarded: Guarded) -> None:
    llm, _ = guarded()
    ok = llm.invoke([HumanMessage("Hi")])
    assert isinstance(ok, AIMessage) and ok.content == "You said: Hi"
    meta = ok.response_metadata["guardgraph"]
    assert meta["refused"] is False
    assert [(v["role"], v["outcome"]) for v in meta["verdicts"]] == [("User", "safe"), ("Agent", "safe")]

    blocked = llm.invoke([HumanMessage("Hi"), AIMessage("Hello"), HumanMessage("Tell me the secret")])
    meta = blocked.response_metadata["guardgraph"]
    assert meta["refused"] is True and meta["role"] == "Agent"
    assert meta["verdicts"][-1]["categories"] == [{"code": "S7", "name": "Privacy"}]


def test_guarded_chat_model_fails_closed(llama_guard_3_policy: Policy) -> None:
    llm = GuardedChatModel(model=EchoChatModel(), guard=RaisingGuard(), policy=llama_guard_3_policy)
    reply = llm.invoke("Hi")
    assert reply.response_metadata["guardgraph"]["refused"] is True
    assert reply.response_metadata["guardgraph"]["verdicts"][0]["outcome"] == "error"
    # fail-open lets it through, marked as a bypass
    llm = GuardedChatModel(
        model=EchoChatModel(),
        guard=RaisingGuard(),
        policy=llama_guard_3_policy,
        input_settings=GuardSettings(fail_open=True),
        output_settings=GuardSettings(fail_open=True),
    )
    assert llm.invoke("Hi").content == "You said: Hi"


def test_guarded_chat_model_streams_only_checked_text(guarded: Guarded) -> None:
    llm, _ = guarded()
    assert "".join(chunk.content for chunk in llm.stream("Hi")) == "You said: Hi"
    assert "".join(chain(llm).stream({"question": "Tell me the secret"})) == PRIVACY_REFUSAL

    async def events() -> list[dict[str, Any]]:
        return [e async for e in chain(llm).astream_events({"question": "Tell me the secret"}, version="v2")]

    streamed = [e for e in asyncio.run(events()) if e["event"] in ("on_chat_model_stream", "on_chat_model_end")]
    assert streamed, "the guarded model emitted no model events"
    for event in streamed:
        message = event["data"].get("chunk") or event["data"].get("output")
        assert "You said" not in str(message.content)  # the blocked reply never reached any callback


def test_guarded_chat_model_async(guarded: Guarded) -> None:
    llm, _ = guarded()

    async def main() -> list[str]:
        c = chain(llm)
        one = await c.ainvoke({"question": "Hi"})
        many = await c.abatch([{"question": "Build a bomb"}, {"question": "Hello"}])
        streamed = "".join([chunk async for chunk in c.astream({"question": "Hey"})])
        return [one, *many, streamed]

    assert asyncio.run(main()) == ["You said: Hi", WEAPONS_REFUSAL, "You said: Hello", "You said: Hey"]


def test_guarded_chat_model_async_leaves_the_loop_free(llama_guard_3_policy: Policy) -> None:
    llm = GuardedChatModel(model=EchoChatModel(), guard=SlowGuard(delay_s=0.3), policy=llama_guard_3_policy)
    reply, ticks, longest_gap = asyncio.run(ticks_during(llm.ainvoke("Hi")))
    assert reply.content == "You said: Hi"
    assert ticks >= 8 and longest_gap < 0.3, (ticks, longest_gap)


class ToolEchoModel(EchoChatModel):
    """Echoes, or calls the first bound tool with the user's text when tools are bound."""

    def bind_tools(self, tools: Any, **kwargs: Any) -> Any:
        from langchain_core.utils.function_calling import convert_to_openai_tool

        return self.bind(tools=[convert_to_openai_tool(t) for t in tools], **kwargs)

    def _generate(self, messages: list[Any], stop: Any = None, run_manager: Any = None, **kw: Any) -> Any:
        from langchain_core.outputs import ChatGeneration, ChatResult

        if not kw.get("tools"):
            return super()._generate(messages, stop, run_manager, **kw)
        name = kw["tools"][0]["function"]["name"]
        call = {"name": name, "args": {"query": messages[-1].content}, "id": "call-1"}
        return ChatResult(generations=[ChatGeneration(message=AIMessage("", tool_calls=[call]))])


def test_guarded_chat_model_binds_tools_on_the_inner_model(llama_guard_3_policy: Policy) -> None:
    from langchain_core.tools import tool

    @tool
    def search(query: str) -> str:
        """Search the web."""
        return query

    llm = GuardedChatModel(
        model=ToolEchoModel(), guard=input_guard(), output_guard=output_guard(), policy=llama_guard_3_policy
    )
    with_tools = llm.bind_tools([search])
    assert isinstance(with_tools, GuardedChatModel) and with_tools.guard is llm.guard
    reply = with_tools.invoke("weather in Paris")
    assert reply.tool_calls and reply.tool_calls[0]["name"] == "search"
    assert reply.tool_calls[0]["args"] == {"query": "weather in Paris"}
    assert reply.response_metadata["guardgraph"]["refused"] is False
    streamed = list(with_tools.stream("weather in Paris"))
    assert streamed[0].tool_call_chunks[0]["name"] == "search"
    blocked = with_tools.invoke("how to build a bomb")  # the input guard still refuses
    assert not blocked.tool_calls and blocked.content == WEAPONS_REFUSAL
    leaked = with_tools.invoke("find the secret")  # the output guard reads the tool call's arguments
    assert not leaked.tool_calls and leaked.content == PRIVACY_REFUSAL
