"""A turn is all or nothing, and Ctrl-C stops it: what a failed chat model, a killed process and an
interrupted reply leave in the thread (nothing), and what the next turn sends the chat model (never two
user messages in a row). Real processes, a real SQLite file, a scripted chat server on loopback.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import AIMessage, HumanMessage, RemoveMessage
from typer.testing import CliRunner

from guardgraph.graph.cli.app import app
from guardgraph.graph.models.checkpointers import build_checkpointer
from tests.fakes import FakeOpenAIServer
from tests.storage import saved_messages

ROOT = Path(__file__).resolve().parents[1]
LONG_REPLY = [f"Word {i}. " for i in range(600)]  # 60 s at 0.1 s a piece: only a stop ends it early
FIRST_TURN = [("human", "first"), ("ai", "Hello there.")]

# A runner guardgraph does not control (a server worker): LangGraph's default durability.
OTHER_RUNNER = """
import sys
from pathlib import Path
from langchain_core.messages import HumanMessage
from guardgraph.graph.builder import build_graph
from guardgraph.graph.config import GuardGraphConfig
from guardgraph.graph.models.checkpointers import build_checkpointer
from guardgraph.graph.models.deps import build_deps

url, db, thread, text = sys.argv[1:]
config = GuardGraphConfig(guard_endpoint=url, guard_model="guard", chat_endpoint=url, chat_model="chat")
graph = build_graph(build_deps(config), build_checkpointer(Path(db)))
graph.invoke({"messages": [HumanMessage(text)]}, {"configurable": {"thread_id": thread}})
"""


def ask(text: str, *options: str) -> Any:
    return CliRunner().invoke(app, ["ask", text, *options])


def roles_and_texts(request: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(message["role"], message["content"]) for message in request]


@pytest.fixture
def thread_options(fake_openai: FakeOpenAIServer, tmp_path: Path) -> list[str]:
    """The CLI options of a thread in a SQLite file, with one finished turn in it."""
    options = [*fake_openai.cli_options(), "--db", str(tmp_path / "chats.sqlite"), "--thread", "t"]
    assert ask("first", *options).exit_code == 0
    return options


def saved(options: list[str]) -> list[tuple[str, str]]:
    return saved_messages(build_checkpointer(Path(options[options.index("--db") + 1])), "t")


def next_turn_is_clean(fake_openai: FakeOpenAIServer, options: list[str], before: list[tuple[str, str]]) -> None:
    """The next turn sends the chat model the thread as it was, then the new message; and it is saved whole."""
    fake_openai.reply, fake_openai.piece_delay_s, fake_openai.chat_status = ["Fine."], 0.0, 200
    result = ask("again", *options)
    assert result.exit_code == 0, result.output
    expected = [("user" if kind == "human" else "assistant", text) for kind, text in before] + [("user", "again")]
    assert roles_and_texts(fake_openai.chat_requests[-1]) == expected
    assert saved(options) == [*before, ("human", "again"), ("ai", "Fine.")]


def start_and_wait_for_the_reply(
    fake_openai: FakeOpenAIServer, command: list[str], typed: str | None = None, **popen: Any
) -> subprocess.Popen[str]:
    """Start ``command`` (typing ``typed`` into it), wait until a long reply is streaming, and a second more."""
    fake_openai.reply, fake_openai.piece_delay_s = LONG_REPLY, 0.1
    fake_openai.streaming.clear()
    process = subprocess.Popen(command, cwd=ROOT, text=True, **popen)
    if typed is not None:
        assert process.stdin is not None
        process.stdin.write(typed)
        process.stdin.flush()
    if not fake_openai.streaming.wait(120):
        process.kill()
        raise AssertionError(f"the reply never started: {process.communicate(timeout=30)}")
    time.sleep(1.0)  # a few pieces of the reply are out
    return process


def test_a_failed_chat_model_leaves_the_thread_as_before(
    fake_openai: FakeOpenAIServer, thread_options: list[str]
) -> None:
    fake_openai.chat_status = 500
    failed = ask("second", *thread_options)
    assert failed.exit_code == 2 and "nothing was saved" in failed.output
    assert saved(thread_options) == FIRST_TURN
    next_turn_is_clean(fake_openai, thread_options, FIRST_TURN)


def test_a_process_killed_mid_turn_leaves_the_thread_as_before(
    fake_openai: FakeOpenAIServer, thread_options: list[str], guardgraph_command: list[str]
) -> None:
    command = [*guardgraph_command, "ask", "second", *thread_options]
    process = start_and_wait_for_the_reply(fake_openai, command, stdout=subprocess.DEVNULL)
    process.kill()
    process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL
    assert saved(thread_options) == FIRST_TURN
    next_turn_is_clean(fake_openai, thread_options, FIRST_TURN)


def test_a_turn_another_runner_left_unanswered_is_dropped_by_the_next_one(
    fake_openai: FakeOpenAIServer, thread_options: list[str]
) -> None:
    db = thread_options[thread_options.index("--db") + 1]
    script = [sys.executable, "-c", OTHER_RUNNER, fake_openai.url, db, "t", "second"]
    process = start_and_wait_for_the_reply(fake_openai, script)
    process.kill()
    process.wait(timeout=30)
    assert saved(thread_options) == [*FIRST_TURN, ("human", "second")]  # what that runner left behind
    next_turn_is_clean(fake_openai, thread_options, FIRST_TURN)


def test_ctrl_c_stops_a_streamed_reply_within_a_second(
    fake_openai: FakeOpenAIServer, thread_options: list[str], guardgraph_command: list[str]
) -> None:
    pipes = {"stdin": subprocess.PIPE, "stdout": subprocess.PIPE, "stderr": subprocess.PIPE}
    chat = start_and_wait_for_the_reply(
        fake_openai, [*guardgraph_command, "chat", *thread_options], "Tell me a long story\n", **pipes
    )
    try:
        interrupted = time.monotonic()
        chat.send_signal(signal.SIGINT)
        assert fake_openai.hung_up.wait(10), "the generation went on after Ctrl-C"
        assert fake_openai.hung_up_at is not None and fake_openai.hung_up_at - interrupted < 1.0
        out, err = chat.communicate("/exit\n", timeout=60)  # back at the prompt: the chat goes on
    finally:
        if chat.poll() is None:
            chat.kill()
            chat.wait(timeout=30)
    assert chat.returncode == 0, err
    assert "Word 0." in out and "the reply was stopped; nothing was saved" in out
    assert "Word 599." not in out
    assert saved(thread_options) == FIRST_TURN
    next_turn_is_clean(fake_openai, thread_options, FIRST_TURN)


def test_a_new_user_message_drops_the_unanswered_ones_of_an_earlier_write() -> None:
    from guardgraph.nodes.state import thread_messages

    answered = [HumanMessage("hi", id="1"), AIMessage("hello", id="2")]
    left = [*answered, HumanMessage("lost", id="3")]
    assert [m.id for m in thread_messages(left, [HumanMessage("again", id="4")])] == ["1", "2", "4"]
    # one write of several user messages is one turn's input; replies and removals change nothing else
    both = [HumanMessage("a", id="5"), HumanMessage("b", id="6")]
    assert [m.id for m in thread_messages(answered, both)] == ["1", "2", "5", "6"]
    assert [m.id for m in thread_messages(left, [AIMessage("late", id="7")])] == ["1", "2", "3", "7"]
    assert [m.id for m in thread_messages(left, [RemoveMessage(id="3")])] == ["1", "2"]
