"""Graph workers sharing one PostgreSQL database: the load behind tests/test_soak.py and BENCHMARKS.md.

A worker is what docs/deployment.md describes: a process that builds the graph itself from ``GUARDGRAPH_*``
variables (``GUARDGRAPH_DB=postgresql://...``, ``GUARDGRAPH_AUDIT=...``), opens the database with
``open_persistence`` (a sync worker: ``invoke`` on threads) or ``aopen_persistence`` (an async worker:
``ainvoke`` on tasks), and runs every turn inside ``persistence.turn(thread_id)``. The models are
tests.serving's scripted ones (``GUARDGRAPH_SERVER_FACTORY=tests.serving:make_deps``).

Each worker runs ``turns`` turns on each of the same ``threads`` conversation threads, all its threads at
once, so every thread is touched by every worker in turn. A worker's message ``k`` on a thread is answered,
refused by the input guard (it says "bomb") or has its draft blocked by the output guard (it says
"secret", which the echoing reply repeats), in a fixed rotation.

:func:`check` reads everything back: each thread's history against the turns the workers completed, the
stored checkpoints for any blocked draft, and the shared audit log against the verdicts of those turns.

``python -m tests.soak`` starts a throwaway cluster, runs 4 workers (2 sync, 2 async) x 8 threads x 10
turns and prints the figures as JSON: turns per second, turn latency (waiting for the thread's lock
included), and the checks, which must all be 0.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
WORKER_TIMEOUT_S = 240  # a whole worker, start to exit: every load here is bounded
MODES = ("sync", "async")


def thread_id(thread: int) -> str:
    return f"thread-{thread}"


def message(worker: int, thread: int, k: int) -> str:
    """Worker ``worker``'s message ``k`` on ``thread``: answered, input-refused or output-blocked in turn."""
    return f"w{worker} t{thread} m{k}" + {3: " bomb", 4: " secret"}.get(k % 5, "")


def blocked_draft(text: str) -> str | None:
    """The draft the output guard blocks for ``text`` (the echo of a secret), or None."""
    return f"You said: {text}" if text.endswith(" secret") else None


# --- the worker process ------------------------------------------------------------------------------


def _turn_record(thread: str, text: str, state: dict[str, Any], started: float) -> dict[str, Any]:
    return {
        "thread": thread,
        "text": text,
        "reply": state["messages"][-1].content,
        "refused": bool(state.get("refused")),
        "error": state.get("error"),
        "verdicts": [[v["role"], v["outcome"]] for v in state.get("verdicts", [])],
        "latency_s": time.perf_counter() - started,
        "finished_at": time.time(),
    }


def _lanes(args: argparse.Namespace) -> list[int]:
    return list(range(args.threads)) if args.only_thread is None else [args.only_thread]


def _ready() -> float:
    """Tell the parent the graph is built, wait for its go (every worker starts its load together); the time."""
    print("ready", flush=True)
    sys.stdin.readline()
    return time.time()


def _run_sync(args: argparse.Namespace) -> tuple[float, list[dict[str, Any]]]:
    from langchain_core.messages import HumanMessage

    from guardgraph.graph.models.checkpointers import open_persistence
    from guardgraph.graph.server import build_server_graph, config_from_env
    from guardgraph.nodes.context import Context

    with open_persistence(config_from_env().db) as store:
        graph = build_server_graph(checkpointer=store.checkpointer)
        started = _ready()

        def lane(thread: int) -> list[dict[str, Any]]:
            done = []
            for k in range(args.turns):
                text, tid, started = message(args.index, thread, k), thread_id(thread), time.perf_counter()
                with store.turn(tid):
                    state = graph.invoke(
                        {"messages": [HumanMessage(text)]},
                        {"configurable": {"thread_id": tid}},
                        context=Context(stream_tokens=False),
                    )
                done.append(_turn_record(tid, text, state, started))
            return done

        with ThreadPoolExecutor(len(_lanes(args))) as pool:
            return started, [turn for turns in pool.map(lane, _lanes(args)) for turn in turns]


async def _run_async(args: argparse.Namespace) -> tuple[float, list[dict[str, Any]]]:
    from langchain_core.messages import HumanMessage

    from guardgraph.graph.models.checkpointers import aopen_persistence
    from guardgraph.graph.server import build_server_graph, config_from_env
    from guardgraph.nodes.context import Context

    async with await aopen_persistence(config_from_env().db) as store:
        graph = build_server_graph(checkpointer=store.checkpointer)
        started = await asyncio.to_thread(_ready)

        async def lane(thread: int) -> list[dict[str, Any]]:
            done = []
            for k in range(args.turns):
                text, tid, started = message(args.index, thread, k), thread_id(thread), time.perf_counter()
                async with store.turn(tid):
                    state = await graph.ainvoke(
                        {"messages": [HumanMessage(text)]},
                        {"configurable": {"thread_id": tid}},
                        context=Context(stream_tokens=False),
                    )
                done.append(_turn_record(tid, text, state, started))
            return done

        lanes = await asyncio.gather(*(lane(thread) for thread in _lanes(args)))
        return started, [turn for turns in lanes for turn in turns]


def worker_main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.soak worker")
    parser.add_argument("index", type=int)
    parser.add_argument("mode", choices=MODES)
    parser.add_argument("threads", type=int)
    parser.add_argument("turns", type=int)
    parser.add_argument("--only-thread", type=int, default=None)
    args = parser.parse_args(argv)
    started, turns = _run_sync(args) if args.mode == "sync" else asyncio.run(_run_async(args))
    print(json.dumps({"worker": args.index, "turns": turns, "start": started}), flush=True)


# --- the parent: start, release, collect ----------------------------------------------------------------


def worker_env(db_url: str, audit: Path, **extra: str) -> dict[str, str]:
    """The variables of a worker: the production recipe's, with the scripted models' factory."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("GUARDGRAPH_")}
    env.update(
        GUARDGRAPH_DB=db_url,
        GUARDGRAPH_AUDIT=str(audit),
        GUARDGRAPH_SERVER_FACTORY="tests.serving:make_deps",
        HF_HUB_OFFLINE="1",
        PYTHONPATH=str(ROOT),
    )
    env.update(extra)
    return env


def start_worker(
    env: dict[str, str], index: int, mode: str, threads: int, turns: int, *extra: str
) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "tests.soak", "worker", str(index), mode, str(threads), str(turns), *extra]
    return subprocess.Popen(
        command, cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def wait_ready(workers: Iterable[subprocess.Popen[str]]) -> None:
    """Block until every worker has built its graph (each prints one line: "ready")."""
    for worker in workers:
        assert worker.stdout is not None
        line = worker.stdout.readline().strip()
        if line != "ready":
            _, err = worker.communicate(timeout=30)
            raise RuntimeError(f"worker did not start ({worker.returncode}): {line}\n{err[-3000:]}")


def release(workers: Iterable[subprocess.Popen[str]]) -> None:
    for worker in workers:
        assert worker.stdin is not None
        worker.stdin.write("go\n")
        worker.stdin.flush()


def collect(workers: Iterable[subprocess.Popen[str]], timeout_s: float = WORKER_TIMEOUT_S) -> list[dict[str, Any]]:
    """Each worker's report; a worker that fails or overruns is killed and raises with its stderr."""
    reports = []
    for worker in workers:
        try:
            out, err = worker.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            worker.kill()
            out, err = worker.communicate()
        if worker.returncode != 0:
            raise RuntimeError(f"worker exited {worker.returncode}:\n{err[-3000:]}")
        reports.append(json.loads(out.strip().splitlines()[-1]))
    return reports


def stop(workers: Iterable[subprocess.Popen[str]]) -> None:
    """Kill what is still running (a failed test never leaves workers behind)."""
    for worker in workers:
        if worker.poll() is None:
            worker.kill()
            worker.communicate()


# --- reading everything back -----------------------------------------------------------------------------


def stored_drafts(db_url: str, drafts: Sequence[str]) -> int:
    """How many stored checkpoints, blobs and pending writes contain any of ``drafts``, byte for byte."""
    import psycopg

    needles = [draft.encode("utf-8") for draft in drafts]
    with psycopg.connect(db_url) as conn:
        rows = conn.execute(
            "SELECT blob FROM checkpoint_blobs WHERE blob IS NOT NULL UNION ALL "
            "SELECT blob FROM checkpoint_writes WHERE blob IS NOT NULL UNION ALL "
            "SELECT convert_to(checkpoint::text || metadata::text, 'UTF8') FROM checkpoints"
        ).fetchall()
    return sum(1 for (blob,) in rows if any(needle in blob for needle in needles))


def thread_histories(db_url: str, thread_ids: Iterable[str]) -> dict[str, list[Any]]:
    """Each thread's messages, read back through a fresh checkpointer, as a new worker would."""
    from guardgraph.graph.models.checkpointers import open_persistence
    from guardgraph.graph.server import FACTORY_ENV, build_server_graph

    with open_persistence(db_url) as store:
        graph = build_server_graph({FACTORY_ENV: "tests.serving:make_deps"}, checkpointer=store.checkpointer)
        return {
            tid: graph.get_state({"configurable": {"thread_id": tid}}).values.get("messages", []) for tid in thread_ids
        }


def check_history(messages: Sequence[Any], turns: Sequence[dict[str, Any]]) -> Counter[str]:
    """Problems of one thread's history, given the turns completed on it (by every worker, in any order)."""
    problems: Counter[str] = Counter()
    expected = {turn["text"]: turn for turn in turns}
    humans = [m.content for m in messages if m.type == "human"]
    ids = [m.id for m in messages]
    counts = Counter(humans)
    problems["lost"] = sum(1 for text in expected if counts[text] == 0)
    problems["doubled"] = sum(n - 1 for n in counts.values() if n > 1) + len(ids) - len(set(ids))
    problems["unexpected"] = sum(1 for text in counts if text not in expected)
    for index, m in enumerate(messages):
        after = messages[index + 1] if index + 1 < len(messages) else None
        if m.type == "human" and (after is None or after.type == "human"):
            problems["user_messages_in_a_row" if after is not None else "unanswered"] += 1
        if m.type == "human" and m.content in expected and after is not None and after.type == "ai":
            problems["replies_not_as_shown"] += after.content != expected[m.content]["reply"]
    for worker in {text.split(" ")[0] for text in expected}:  # each worker's turns in the order it ran them
        mine = [text for text in humans if text.startswith(worker + " ") and text in expected]
        problems["out_of_order"] += mine != [turn["text"] for turn in turns if turn["text"].startswith(worker + " ")]
    return problems


def read_audit_lines(path: Path) -> tuple[list[dict[str, Any]], int]:
    """The audit log's records and how many lines are not whole JSON records (torn)."""
    records, torn = [], 0
    for line in path.read_bytes().split(b"\n"):
        if not line:
            continue
        try:
            records.append(json.loads(line))
        except ValueError:
            torn += 1
    return records, torn


def check(db_url: str, audit: Path, reports: Sequence[dict[str, Any]], thread_ids: Iterable[str]) -> dict[str, Any]:
    """Everything that must be 0 after a load, and what it was measured against."""
    turns = [turn for report in reports for turn in report["turns"]]
    by_thread: dict[str, list[dict[str, Any]]] = {tid: [] for tid in thread_ids}
    for turn in turns:
        by_thread.setdefault(turn["thread"], []).append(turn)
    problems: Counter[str] = Counter()
    for tid, messages in thread_histories(db_url, by_thread).items():
        problems.update(check_history(messages, by_thread[tid]))
    records, torn = read_audit_lines(audit)
    decided = Counter((t["thread"], role, outcome) for t in turns for role, outcome in t["verdicts"])
    audited = Counter((r["thread"], r["role"], r["outcome"]) for r in records)
    drafts = [draft for t in turns if (draft := blocked_draft(t["text"]))]
    return {
        "total_turns": len(turns),
        "failed_turns": sum(1 for t in turns if t["error"]),
        "lost": problems["lost"],
        "doubled": problems["doubled"],
        "unexpected": problems["unexpected"],
        "user_messages_in_a_row": problems["user_messages_in_a_row"],
        "unanswered": problems["unanswered"],
        "replies_not_as_shown": problems["replies_not_as_shown"],
        "out_of_order": problems["out_of_order"],
        "stored_drafts": stored_drafts(db_url, drafts),
        "blocked_drafts": len(drafts),
        "audit_records": len(records),
        "guard_decisions": sum(decided.values()),
        "audit_missing": sum((decided - audited).values()),
        "audit_extra": sorted((audited - decided).elements()),
        "torn_audit_lines": torn,
    }


def figures(reports: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Throughput over the load (the go to the last turn's end) and turn latency percentiles, in ms."""
    latencies = sorted(turn["latency_s"] for report in reports for turn in report["turns"])
    span = max(t["finished_at"] for r in reports for t in r["turns"]) - min(r["start"] for r in reports)
    cuts = statistics.quantiles(latencies, n=100, method="inclusive")
    return {
        "seconds": round(span, 2),
        "turns_per_s": round(len(latencies) / span, 1),
        "p50_ms": round(cuts[49] * 1000, 1),
        "p95_ms": round(cuts[94] * 1000, 1),
        "max_ms": round(latencies[-1] * 1000, 1),
    }


def run_soak(db_url: str, audit: Path, workers: int = 4, threads: int = 8, turns: int = 10) -> dict[str, Any]:
    """``workers`` processes (alternately sync and async) x ``threads`` shared threads x ``turns`` turns."""
    env = worker_env(db_url, audit)
    procs = [start_worker(env, index, MODES[index % 2], threads, turns) for index in range(workers)]
    try:
        wait_ready(procs)
        release(procs)
        reports = collect(procs)
    finally:
        stop(procs)
    return {**figures(reports), **check(db_url, audit, reports, [thread_id(t) for t in range(threads)])}


def main(argv: Sequence[str]) -> None:
    if argv[:1] == ["worker"]:
        worker_main(argv[1:])
        return
    parser = argparse.ArgumentParser(prog="python -m tests.soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--turns", type=int, default=10)
    args = parser.parse_args(argv)
    import tempfile

    from tests.postgres import throwaway_postgres

    with throwaway_postgres() as server, tempfile.TemporaryDirectory() as folder:
        load = os.getloadavg()[0]
        result = run_soak(
            server.create_database("soak"), Path(folder) / "audit.jsonl", args.workers, args.threads, args.turns
        )
        print(
            json.dumps(
                {**vars(args), **result, "load_before": round(load, 2), "load_after": round(os.getloadavg()[0], 2)},
                indent=1,
            )
        )


if __name__ == "__main__":
    main(sys.argv[1:])
