"""One turn at a time per thread, on every store (memory, SQLite, Postgres), for sync and async graphs:
overlapping turns are put one after another, a thread held too long is refused clearly, a dead holder's lock
is released."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import HumanMessage

from guardgraph.graph.builder import GuardedChatDeps, build_graph
from guardgraph.graph.models.checkpointers import aopen_persistence, open_persistence
from guardgraph.graph.models.turn_locks import ThreadBusyError
from guardgraph.nodes.context import Context
from guardgraph.policies import Policy
from tests.serving import EchoChatModel, input_guard, output_guard

ROOT = Path(__file__).resolve().parents[1]
TURN = {"configurable": {"thread_id": "t"}}


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> str | None:
    """No database (memory), a SQLite file, or a fresh Postgres database."""
    if request.param == "postgres":
        return str(request.getfixturevalue("postgres_url"))
    return None if request.param == "memory" else str(tmp_path / "c.sqlite")


def slow_deps(policy: Policy) -> GuardedChatDeps:
    """Scripted models whose reply takes 0.3 s: two turns started together overlap unless one waits."""
    return GuardedChatDeps(EchoChatModel(delay_s=0.3), input_guard(), output_guard(), policy)


def contents(state: Any) -> list[str]:
    return [m.content for m in state.values["messages"]]


EXPECTED = [["a", "You said: a", "b", "You said: b"], ["b", "You said: b", "a", "You said: a"]]


def test_sync_turns_on_one_thread_run_one_after_another(db: str | None, llama_guard_3_policy: Policy) -> None:
    with open_persistence(db) as store:
        graph = build_graph(slow_deps(llama_guard_3_policy), store.checkpointer)

        def turn(text: str) -> None:
            with store.turn("t"):
                graph.invoke({"messages": [HumanMessage(text)]}, TURN, context=Context(stream_tokens=False))

        workers = [threading.Thread(target=turn, args=(text,)) for text in "ab"]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(timeout=60)
        assert contents(graph.get_state(TURN)) in EXPECTED


def test_async_turns_on_one_thread_run_one_after_another(db: str | None, llama_guard_3_policy: Policy) -> None:
    async def main() -> list[str]:
        async with await aopen_persistence(db) as store:
            graph = build_graph(slow_deps(llama_guard_3_policy), store.checkpointer)

            async def turn(text: str) -> None:
                async with store.turn("t"):
                    await graph.ainvoke({"messages": [HumanMessage(text)]}, TURN, context=Context(stream_tokens=False))

            await asyncio.wait_for(asyncio.gather(turn("a"), turn("b")), timeout=60)
            return contents(await graph.aget_state(TURN))

    assert asyncio.run(main()) in EXPECTED


def test_a_thread_held_too_long_is_refused(db: str | None) -> None:
    with open_persistence(db, turn_wait_s=0.2) as store, store.turn("t"):
        outcome: list[BaseException | None] = []

        def second() -> None:
            try:
                with store.turn("t"):
                    outcome.append(None)
            except ThreadBusyError as error:
                outcome.append(error)
            with store.turn("another thread"):  # other threads are not held up
                outcome.append(None)

        worker = threading.Thread(target=second)
        worker.start()
        worker.join(timeout=30)
        assert str(outcome[0]) == "thread 't' is busy: another turn on it did not finish within 0.2 s"
        assert outcome[1:] == [None]


HOLDER = """
import sys, time
from guardgraph.graph.models.checkpointers import open_persistence
with open_persistence(sys.argv[1]).turn("t"):
    print("held", flush=True)
    time.sleep(120)
"""


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_a_killed_holder_releases_its_thread(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    db = str(tmp_path / "c.sqlite") if kind == "sqlite" else request.getfixturevalue("postgres_url")
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, db], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with open_persistence(db, turn_wait_s=0.2) as store:
            with pytest.raises(ThreadBusyError), store.turn("t"):
                pass
            os.kill(holder.pid, signal.SIGKILL)
            holder.wait(timeout=30)
            with open_persistence(db, turn_wait_s=10) as again, again.turn("t"):
                pass
    finally:
        holder.kill()
        holder.wait()
