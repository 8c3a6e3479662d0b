"""Several graph workers on one PostgreSQL database (tests/soak.py): a soak, and a worker killed mid-turn.

Workers are real processes built the way docs/deployment.md's production recipe builds them
(``GUARDGRAPH_DB``, ``GUARDGRAPH_AUDIT``, ``open_persistence`` / ``aopen_persistence``, ``turn(thread_id)``),
half of them sync, half async, with scripted models.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from tests.postgres import PostgresServer
from tests.serving import DELAY_ENV, STARTED_ENV
from tests.soak import (
    MODES,
    check,
    collect,
    message,
    read_audit_lines,
    release,
    run_soak,
    start_worker,
    stop,
    stored_drafts,
    thread_id,
    wait_ready,
    worker_env,
)

MUST_BE_ZERO = (
    "failed_turns", "lost", "doubled", "replies_not_as_shown", "out_of_order", "stored_drafts", "audit_missing",
    "torn_audit_lines",
)  # fmt: skip
NOTHING_HALF_WRITTEN = ("unexpected", "user_messages_in_a_row", "unanswered")


def zeros(result: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    return {key: result[key] for key in keys}


def test_four_workers_eight_threads_ten_turns(postgres_server: PostgresServer, tmp_path: Path) -> None:
    """4 workers x 8 shared threads x 10 turns: every history complete and in order, every reply as shown,
    no blocked draft stored, one whole audit line per guard decision."""
    url = postgres_server.create_database("soak")
    result = run_soak(url, tmp_path / "audit.jsonl", workers=4, threads=8, turns=10)
    assert result["total_turns"] == 4 * 8 * 10
    assert zeros(result, MUST_BE_ZERO + NOTHING_HALF_WRITTEN) == dict.fromkeys(MUST_BE_ZERO + NOTHING_HALF_WRITTEN, 0)
    assert result["audit_extra"] == []
    assert result["audit_records"] == result["guard_decisions"] > 4 * 8 * 10  # answered turns are checked twice
    assert result["blocked_drafts"] == 4 * 8 * 2  # the output guard blocked some, and none was stored
    assert stored_drafts(url, [f"You said: {message(0, 0, 0)}"]) > 0  # the same search finds a reply that was shown


WORKERS, THREADS, TURNS = 3, 4, 5
VICTIM = 9  # the killed worker's index: its message on thread 0 is message(VICTIM, 0, 0)


def replies_checked(audit: Path) -> list[dict[str, Any]]:
    """The output guard's decisions so far: each one is a turn about to end."""
    return [record for record in read_audit_lines(audit)[0] if record["role"] == "Agent"] if audit.exists() else []


@pytest.fixture(scope="module")
def killed_worker(postgres_server: PostgresServer, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A worker is killed (SIGKILL) in the middle of a turn on thread 0 while three others run theirs.

    The victim starts first and holds thread 0 through a reply that would take two minutes; the others start
    once it is mid-turn, so all their thread-0 turns wait for it, and it is killed once they have answered on
    other threads.
    """
    url, folder = postgres_server.create_database("sigkill"), tmp_path_factory.mktemp("sigkill")
    audit, started = folder / "audit.jsonl", folder / "victim-mid-turn"
    slow = worker_env(url, audit, **{DELAY_ENV: "120", STARTED_ENV: str(started)})
    victim = start_worker(slow, VICTIM, "sync", 1, 1, "--only-thread", "0")
    others = [start_worker(worker_env(url, audit), index, MODES[index % 2], THREADS, TURNS) for index in range(WORKERS)]
    try:
        wait_ready([victim])
        release([victim])
        deadline = time.monotonic() + 60
        while not started.exists() and victim.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert started.exists(), "the victim's turn never reached its chat model"
        wait_ready(others)
        release(others)
        while len(replies_checked(audit)) < WORKERS and time.monotonic() < deadline:
            time.sleep(0.05)  # the others answer on threads 1..3 meanwhile
        time.sleep(1.0)  # those turns store their replies and return
        os.kill(victim.pid, signal.SIGKILL)
        killed_at = time.time()
        victim.wait(timeout=30)
        reports = collect(others)
    finally:
        stop([victim, *others])
    return {
        "victim_returncode": victim.returncode,
        "killed_at": killed_at,
        "reports": reports,
        "result": check(url, audit, reports, [thread_id(t) for t in range(THREADS)]),
    }


def test_killed_worker_leaves_the_thread_usable(killed_worker: dict[str, Any]) -> None:
    """The others carried on while the victim held thread 0, took thread 0 over once it died, and every turn
    they completed is stored once, in order, with the reply they were shown."""
    assert killed_worker["victim_returncode"] == -signal.SIGKILL
    result, turns = killed_worker["result"], [t for r in killed_worker["reports"] for t in r["turns"]]
    assert result["total_turns"] == WORKERS * THREADS * TURNS
    assert zeros(result, MUST_BE_ZERO) == dict.fromkeys(MUST_BE_ZERO, 0)
    on_thread_0 = [t["finished_at"] for t in turns if t["thread"] == thread_id(0)]
    elsewhere = [t["finished_at"] for t in turns if t["thread"] != thread_id(0)]
    assert min(elsewhere) < killed_worker["killed_at"] < min(on_thread_0)
    # the victim's input guard decided before it was killed: that decision is its one extra audit line
    assert set(result["audit_extra"]) <= {(thread_id(0), "User", "safe")} and len(result["audit_extra"]) <= 1


def test_killed_turn_left_nothing_half_written(killed_worker: dict[str, Any]) -> None:
    """The victim's question is not in the history, and the chat model never got two user messages in a row."""
    result = killed_worker["result"]
    assert zeros(result, NOTHING_HALF_WRITTEN) == dict.fromkeys(NOTHING_HALF_WRITTEN, 0), message(VICTIM, 0, 0)
