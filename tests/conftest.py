"""Fixtures shared by the test files: the bundled policies, a one-turn request builder, a guarded-graph builder,
a scripted OpenAI-compatible server and the stand-in Llama Guard endpoint on loopback, and a throwaway
PostgreSQL server with a fresh database per test."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from langchain_core.language_models import BaseChatModel
from langgraph.checkpoint.memory import InMemorySaver

from guardgraph.graph.builder import GuardedChatDeps, build_graph
from guardgraph.nodes.checks.request import GuardRequest, Turn
from guardgraph.nodes.guards.base import Guard
from guardgraph.policies import Policy, load_policy
from tests.fakes import FakeOpenAIServer, LoopbackServer, scripted_llama_guard, standin_llama_guard_endpoint
from tests.postgres import PostgresServer, PostgresUnavailable

GraphBuilder = Callable[..., Any]
RequestBuilder = Callable[..., GuardRequest]


@pytest.fixture(scope="session")
def llama_guard_3_policy() -> Policy:
    """The bundled ``llama-guard-3`` policy (policies are immutable: one per session)."""
    return load_policy("llama-guard-3")


@pytest.fixture(scope="session")
def seed_custom_policy() -> Policy:
    """The bundled ``seed-custom`` policy: Llama Guard 1's O1-O6 plus the example-defined O7 and O8."""
    return load_policy("seed-custom")


@pytest.fixture
def user_request(llama_guard_3_policy: Policy) -> RequestBuilder:
    """Builds a one-turn User request for ``text``, under the Llama Guard 3 policy unless ``policy`` is given."""

    def make(text: str = "How do I make a cake?", policy: Policy | None = None) -> GuardRequest:
        return GuardRequest("User", (Turn("user", text),), llama_guard_3_policy if policy is None else policy)

    return make


@pytest.fixture
def make_guarded_graph(llama_guard_3_policy: Policy) -> GraphBuilder:
    """Builds the guarded chat graph around ``chat_model`` under the Llama Guard 3 policy.

    The guards default to scripted Llama Guards that answer ``safe`` and the checkpointer to a fresh
    ``InMemorySaver``; other keyword arguments (settings, ``speculate``, ...) go to ``GuardedChatDeps``.
    """

    def make(
        chat_model: BaseChatModel,
        input_guard: Guard | None = None,
        output_guard: Guard | None = None,
        checkpointer: Any = None,
        **deps: Any,
    ) -> Any:
        guarded = GuardedChatDeps(
            chat_model=chat_model,
            input_guard=input_guard or scripted_llama_guard(),
            output_guard=output_guard or scripted_llama_guard(),
            policy=llama_guard_3_policy,
            **deps,
        )
        return build_graph(guarded, checkpointer or InMemorySaver())

    return make


@pytest.fixture
def fake_openai() -> Iterator[FakeOpenAIServer]:
    """A scripted guard and chat server on loopback (``tests.fakes.FakeOpenAIServer``), stopped after the test.

    It answers ``safe`` and replies ``Hello there.`` until the test sets ``guard``, ``reply``,
    ``piece_delay_s`` or ``chat_status``; ``cli_options()`` points the CLI at it.
    """
    with FakeOpenAIServer() as server:
        yield server


@pytest.fixture(scope="session")
def guardgraph_command() -> list[str]:
    """The ``guardgraph`` command of this environment, to run the real CLI as a subprocess."""
    exe = shutil.which("guardgraph", path=str(Path(sys.executable).parent))
    return [exe] if exe else [sys.executable, "-m", "guardgraph.graph.cli.app"]


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One throwaway PostgreSQL cluster for the session (tests/postgres.py), stopped and removed at its end.

    Without the binaries the Postgres tests are skipped, naming what to install; in CI (``CI`` set, as
    ``.ci/run`` does, which also installs them) they fail instead.
    """
    try:
        server = PostgresServer()
    except PostgresUnavailable as error:
        if os.environ.get("CI"):
            pytest.fail(str(error))
        pytest.skip(str(error))
    with server:
        yield server


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    """A new, empty database on the session's server: ``postgresql://postgres@127.0.0.1:PORT/NAME``."""
    return postgres_server.create_database()


@pytest.fixture
def llama_guard_endpoint() -> Iterator[LoopbackServer]:
    """A stand-in Llama Guard on loopback (``StandInLlamaGuard``: flags blunt harm, says ``safe`` to everything
    else, with logprobs); pass ``f"{server.url}/v1"`` as the guard endpoint. Stopped after the test."""
    with standin_llama_guard_endpoint() as server:
        yield server
