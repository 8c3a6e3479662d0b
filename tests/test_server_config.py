"""graph/server.py without a server: settings from the environment, the factory hook, one graph per process."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from langchain_core.messages import HumanMessage

import guardgraph.graph.server as server

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def fresh_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(server, "_graph", None)
    monkeypatch.setenv(server.FACTORY_ENV, "tests.serving:make_deps")
    yield


def test_config_from_env() -> None:
    config = server.config_from_env(
        {
            "GUARDGRAPH_POLICY": "seed-custom",
            "GUARDGRAPH_GUARD_ENDPOINT": "http://guard:8001/v1",
            "GUARDGRAPH_GUARD_MODEL": "llama-guard-3",
            "GUARDGRAPH_FAIL_OPEN": "true",
            "GUARDGRAPH_WINDOW_TURNS": "4",
            "GUARDGRAPH_GUARD_TIMEOUT_S": "2.5",
            "GUARDGRAPH_SYSTEM_PROMPT": "",
            "GUARDGRAPH_DB": "postgresql://postgres@db:5432/app",  # for workers outside the LangGraph server
            "GUARDGRAPH_CHAT_MODEL": "",  # empty means unset
            "UNRELATED": "x",
        }
    )
    assert config.policy == "seed-custom"
    assert config.guard_endpoint == "http://guard:8001/v1" and config.guard_model == "llama-guard-3"
    assert config.fail_open is True and config.window_turns == 4 and config.guard_timeout_s == 2.5
    assert config.system_prompt is None and config.chat_model is None
    assert config.db == "postgresql://postgres@db:5432/app"
    defaults = server.config_from_env({})
    assert defaults.guard_model is None and defaults.chat_model is None  # offline models
    assert defaults.system_prompt is None


def test_bad_settings_fail_at_build_time() -> None:
    with pytest.raises(ValueError):
        server.config_from_env({"GUARDGRAPH_WINDOW_TURNS": "zero"})
    with pytest.raises(ValueError, match=r"package\.module:function"):
        server.build_server_graph({server.FACTORY_ENV: "tests.serving"})


@pytest.mark.usefixtures("fresh_server")
def test_one_graph_per_process_without_a_checkpointer() -> None:
    built = server.get_graph()
    assert built.checkpointer is None  # the LangGraph server brings its own
    assert server.get_graph() is built
    assert asyncio.run(server.make_graph()) is built
    from guardgraph.graph.server import graph  # the lazy module attribute

    assert graph is built
    state = built.invoke({"messages": [HumanMessage("Hi")]})
    assert state["messages"][-1].content == "You said: Hi"


@pytest.mark.usefixtures("fresh_server")
def test_the_langgraph_server_graph_never_reads_guardgraph_db(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    monkeypatch.setenv(server.DB_ENV, str(tmp_path / "c.sqlite"))
    assert server.get_graph().checkpointer is None
    assert "GUARDGRAPH_DB is set but not used" in caplog.text
    assert not any(tmp_path.iterdir())


def test_a_worker_builds_the_graph_with_its_own_checkpointer(tmp_path: Path) -> None:
    from guardgraph.graph.models.checkpointers import open_persistence

    environ = {server.FACTORY_ENV: "tests.serving:make_deps", server.DB_ENV: str(tmp_path / "c.sqlite")}
    with open_persistence(server.config_from_env(environ).db) as store:
        built = server.build_server_graph(environ, checkpointer=store.checkpointer)
        built.invoke({"messages": [HumanMessage("Hi")]}, {"configurable": {"thread_id": "w"}})
    with open_persistence(tmp_path / "c.sqlite") as store:
        again = server.build_server_graph(environ, checkpointer=store.checkpointer)
        state = again.get_state({"configurable": {"thread_id": "w"}})
    assert [m.content for m in state.values["messages"]] == ["Hi", "You said: Hi"]


@pytest.mark.usefixtures("fresh_server")
def test_make_graph_builds_off_the_event_loop() -> None:
    async def main() -> object:
        return await server.make_graph()

    assert asyncio.run(main()) is server.get_graph()


def test_langgraph_json_names_the_factory() -> None:
    config = json.loads((ROOT / "langgraph.json").read_text())
    path, _, name = config["graphs"]["guardgraph"].partition(":")
    assert (ROOT / path).resolve() == Path(server.__file__).resolve()
    assert callable(getattr(server, name))
    assert config["dependencies"] == ["."]
