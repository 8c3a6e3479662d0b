"""``--db`` as a user meets it: PostgreSQL URLs, one clear line for a database that cannot be used, turns from
several processes on one thread, and a database restarted between turns. Against a real server
(``postgres_server``, tests/postgres.py); the CLI runs as real processes with scripted models
(``python -m tests.serving``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import HumanMessage
from typer.testing import CliRunner

import guardgraph.graph.cli.app as cli_app
from guardgraph.graph.builder import build_graph
from guardgraph.graph.models.checkpointers import DatabaseError, PostgresURL, open_persistence, parse_db
from guardgraph.graph.server import FACTORY_ENV, build_server_graph
from guardgraph.nodes.context import Context
from tests.postgres import PostgresServer, free_port
from tests.serving import DELAY_ENV, EchoChatModel, make_deps

ROOT = Path(__file__).resolve().parents[1]
SERVING = {FACTORY_ENV: "tests.serving:make_deps"}


def history(db: str, thread: str) -> list[tuple[str, str]]:
    """``thread``'s messages as a new process reads them: (type, text)."""
    with open_persistence(db) as store:
        graph = build_server_graph(SERVING, checkpointer=store.checkpointer)
        messages = graph.get_state({"configurable": {"thread_id": thread}}).values.get("messages", [])
    return [(m.type, m.content) for m in messages]


def test_database_values() -> None:
    assert parse_db(None) is None
    assert parse_db("chats.sqlite") == Path("chats.sqlite") and parse_db(Path("a/b.db")) == Path("a/b.db")
    for url in ("postgresql://postgres@127.0.0.1:5432/app", "postgres://u:p@db/app?sslmode=require"):
        assert parse_db(url) == PostgresURL(url)
    shown = PostgresURL("postgresql://app:hunter2@db:5432/app?password=again&sslmode=disable").display
    assert "hunter2" not in shown and "again" not in shown and shown.startswith("postgresql://app:***@db:5432/app")
    with pytest.raises(DatabaseError, match="unsupported database URL"):
        parse_db("mysql://root@127.0.0.1/app")


@pytest.fixture
def no_models(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Records any attempt to load models (none may happen before the database is usable)."""
    loaded: list[object] = []
    monkeypatch.setattr(cli_app, "build_deps", lambda *args, **kwargs: loaded.append(args) or pytest.fail("models"))
    return loaded


BAD_DATABASES: dict[str, tuple[Callable[[PostgresServer, Path], str], str]] = {
    "nothing listening": (lambda s, d: f"postgresql://postgres@127.0.0.1:{free_port()}/app", "Connection refused"),
    "no such database": (lambda s, d: s.url("no_such_db"), 'database "no_such_db" does not exist'),
    "password shown nowhere": (lambda s, d: f"postgresql://postgres:hunter2@127.0.0.1:{free_port()}/app", "***@"),
    "not a port": (lambda s, d: "postgresql://postgres@127.0.0.1:fivefour/app", 'option "port"'),
    "another kind of database": (lambda s, d: "mysql://root@127.0.0.1/app", "unsupported database URL"),
    "a folder as SQLite file": (lambda s, d: str(d), "is a directory, not a file"),
    "not a SQLite file": (lambda s, d: str(d / "notes.txt"), "file is not a database"),
}


@pytest.mark.parametrize("command", ["ask", "chat"])
@pytest.mark.parametrize("case", BAD_DATABASES)
def test_unusable_database_is_one_line_before_any_model_loads(
    case: str,
    command: str,
    postgres_server: PostgresServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    no_models: list[object],
) -> None:
    make_db, message = BAD_DATABASES[case]
    (tmp_path / "notes.txt").write_text("not a database\n" * 100)
    monkeypatch.chdir(tmp_path)
    db = make_db(postgres_server, tmp_path)
    args = ["ask", "hi", "--db", db] if command == "ask" else ["chat", "--db", db]
    result = CliRunner().invoke(cli_app.app, args, input="hi\n")
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert lines[0].startswith("error: ") and message in lines[0]
    assert "hunter2" not in result.output and "Traceback" not in result.output
    assert no_models == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]  # no folder named "postgresql:"


def run_cli(*args: str, cwd: Path, delay_s: float = 0.0) -> subprocess.Popen[str]:
    """The real ``guardgraph`` command in its own process, scripted models in place of the offline ones."""
    env = {**os.environ, DELAY_ENV: str(delay_s), "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "tests.serving", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.parametrize("database", ["sqlite", "postgres"])
def test_three_asks_at_once_on_one_thread_are_all_kept(database: str, request: Any, tmp_path: Path) -> None:
    """Each process is shown a reply; afterwards the thread holds every question with the reply that was shown.

    On Postgres this is also the CLI keeping a conversation in the server: read back by a fresh connection,
    with nothing written where the command ran."""
    db = "c.sqlite" if database == "sqlite" else request.getfixturevalue("postgres_url")
    questions = [f"question {n}" for n in range(3)]
    # each reply takes 2 s, started together: without a lock per thread the three turns overlap
    procs = [run_cli("ask", q, "--db", db, "--thread", "same", "--json", cwd=tmp_path, delay_s=2.0) for q in questions]
    shown = {}
    for question, proc in zip(questions, procs, strict=True):
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err[-2000:]
        shown[question] = json.loads(out)["reply"]
    assert shown == {q: f"You said: {q}" for q in questions}
    assert sorted(p.name for p in tmp_path.iterdir()) == (
        [] if database == "postgres" else ["c.sqlite", "c.sqlite-turns"]
    )
    stored = history(str(tmp_path / db) if database == "sqlite" else db, "same")
    assert len(stored) == 6 and sorted(stored[0::2]) == [("human", q) for q in questions]
    assert all(stored[i + 1] == ("ai", shown[text]) for i, (_, text) in enumerate(stored) if i % 2 == 0)


def test_database_restarted_between_turns(postgres_server: PostgresServer, postgres_url: str) -> None:
    """After a restart the next turn reconnects; while the server is down a turn fails with one clear error and
    leaves nothing behind; once it is back the thread goes on where it was."""
    config = {"configurable": {"thread_id": "r"}}

    def turn(store: Any, graph: Any, text: str) -> str:
        with store.turn("r"):
            state = graph.invoke({"messages": [HumanMessage(text)]}, config, context=Context(stream_tokens=False))
        return str(state["messages"][-1].content)

    with open_persistence(postgres_url, timeout_s=2) as store:
        graph = build_server_graph(SERVING, checkpointer=store.checkpointer)
        assert turn(store, graph, "one") == "You said: one"
        postgres_server.restart()
        assert turn(store, graph, "two") == "You said: two"
        postgres_server.stop_server()
        try:
            with pytest.raises(DatabaseError) as failed:
                turn(store, graph, "three")
        finally:
            postgres_server.start_server()
        assert str(failed.value).startswith(postgres_url) and "three" not in str(failed.value)
        assert turn(store, graph, "four") == "You said: four"
    assert history(postgres_url, "r") == [
        ("human", "one"),
        ("ai", "You said: one"),
        ("human", "two"),
        ("ai", "You said: two"),
        ("human", "four"),
        ("ai", "You said: four"),
    ]


def test_database_restarted_during_a_turn_is_never_silent(postgres_server: PostgresServer, postgres_url: str) -> None:
    """The restart ends the session holding the thread's lock: the turn may finish on new connections, but it is
    reported failed, naming the lost lock, because another turn could have run on the thread meanwhile."""
    deps = make_deps()
    deps.chat_model = EchoChatModel(delay_s=1.5)
    with open_persistence(postgres_url, timeout_s=5) as store:
        graph = build_graph(deps, store.checkpointer)
        restart = threading.Timer(0.5, postgres_server.restart)
        restart.start()
        with pytest.raises(DatabaseError, match="lock was lost during the turn"), store.turn("m"):
            graph.invoke({"messages": [HumanMessage("hello")]}, {"configurable": {"thread_id": "m"}})
        restart.join()
        with store.turn("m"):  # the thread stays usable
            graph.invoke({"messages": [HumanMessage("again")]}, {"configurable": {"thread_id": "m"}})
    assert history(postgres_url, "m")[-2:] == [("human", "again"), ("ai", "You said: again")]
