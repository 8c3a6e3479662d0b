"""One compiled graph serving 16 threads x 20 turns at once on SQLite, then a REAL process restart.

The load runs in one subprocess (scripted fast models, one shared ``build_checkpointer(db)``); a second,
fresh subprocess reads every thread's state back and checks that the history is complete, in order,
with no lost or duplicated messages.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
THREADS, TURNS = 16, 20

COMMON = """
import json, sys, threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from langchain_core.messages import HumanMessage
from guardgraph.graph.builder import GuardedChatDeps, build_graph
from guardgraph.graph.models.checkpointers import build_checkpointer
from guardgraph.policies import load_policy
from guardgraph.nodes.context import Context
from tests.fakes import keyword_answer, scripted_llama_guard
from tests.serving import EchoChatModel

POLICY = load_policy("llama-guard-3")
DB = Path(sys.argv[1])
THREADS, TURNS = int(sys.argv[2]), int(sys.argv[3])

def make_graph():
    guard = scripted_llama_guard(keyword_answer("forbidden", codes="S2"))
    deps = GuardedChatDeps(chat_model=EchoChatModel(), input_guard=guard, output_guard=guard, policy=POLICY)
    return build_graph(deps, build_checkpointer(DB))

def text(thread: int, turn: int) -> str:
    return f"t{thread} m{turn}" + (" forbidden" if turn % 5 == 4 else "")

def expected(thread: int) -> list[list[str]]:
    out = []
    for turn in range(TURNS):
        out.append(["human", text(thread, turn)])
        if turn % 5 == 4:
            out.append(["ai", POLICY.category("S2").refusal or POLICY.default_refusal])
        else:
            out.append(["ai", f"You said: {text(thread, turn)}"])
    return out
"""

LOAD = (
    COMMON
    + """
graph = make_graph()
barrier = threading.Barrier(THREADS)

def run(thread: int) -> list[list[str]]:
    barrier.wait()
    config = {"configurable": {"thread_id": f"thread-{thread}"}}
    for turn in range(TURNS):
        state = graph.invoke({"messages": [HumanMessage(text(thread, turn))]}, config, context=Context(stream_tokens=False))
        assert not state.get("error"), state.get("error")
    return [[m.type, m.content] for m in state["messages"]]

with ThreadPoolExecutor(THREADS) as pool:
    results = list(pool.map(run, range(THREADS)))
bad = [t for t in range(THREADS) if results[t] != expected(t)]
print(json.dumps({"bad_in_process": bad}))
"""
)

READ = (
    COMMON
    + """
graph = make_graph()
report = {"bad": [], "duplicate_ids": [], "threads": 0}
for thread in range(THREADS):
    state = graph.get_state({"configurable": {"thread_id": f"thread-{thread}"}})
    messages = state.values.get("messages", [])
    report["threads"] += 1
    if [[m.type, m.content] for m in messages] != expected(thread):
        report["bad"].append({"thread": thread, "got": [[m.type, m.content] for m in messages][:6]})
    ids = [m.id for m in messages]
    if len(set(ids)) != len(ids) or None in ids:
        report["duplicate_ids"].append(thread)
    if state.values.get("draft") or state.next:
        report["bad"].append({"thread": thread, "unfinished": list(state.next)})
print(json.dumps(report))
"""
)


def run_script(script: str, db: Path) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", script, str(db), str(THREADS), str(TURNS)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_concurrent_threads_survive_a_restart(tmp_path: Path) -> None:
    db = tmp_path / "threads.sqlite"
    assert run_script(LOAD, db) == {"bad_in_process": []}
    # a fresh process: nothing in memory, everything from the SQLite file
    report = run_script(READ, db)
    assert report == {"bad": [], "duplicate_ids": [], "threads": THREADS}
