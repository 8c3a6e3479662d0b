"""The guarded chat graph for the LangGraph server: ``langgraph dev``, ``langgraph up``, the Platform.

``langgraph.json`` names :func:`make_graph`, an async factory: the server calls it for each run, it
builds the graph once per process (off the event loop: loading models takes seconds) and then hands
back the same compiled graph. The graph is compiled WITHOUT a checkpointer: the server provides
persistence (in memory for ``langgraph dev``, Postgres in production: its ``DATABASE_URI``) and threads.
Python code can use the same graph directly: ``from guardgraph.graph.server import graph`` (built on first
access) or :func:`get_graph`.

``GUARDGRAPH_DB`` is for worker processes of your own that build this graph outside the LangGraph server:
``open_persistence(config_from_env().db)`` (``guardgraph.graph.models.checkpointers``: memory when unset, a
SQLite file, or ``postgresql://user@host:port/dbname``), then ``build_server_graph(checkpointer=...)`` and
each turn inside ``persistence.turn(thread_id)``; docs/deployment.md has the whole recipe. The LangGraph
server's graph (:func:`make_graph`, :func:`get_graph`) never reads it, and says so in a warning when it is set.

What a deployment fixes comes from the environment, one variable per
:class:`guardgraph.graph.config.GuardGraphConfig` field, named ``GUARDGRAPH_`` + the field in capitals;
unset means the CLI's default (offline models):

- ``GUARDGRAPH_POLICY`` (``llama-guard-3``), ``GUARDGRAPH_GUARD_BACKEND``, ``GUARDGRAPH_GUARD_FORMAT``
- ``GUARDGRAPH_GUARD_MODEL``, ``GUARDGRAPH_GUARD_ENDPOINT``, ``GUARDGRAPH_GUARD_TIMEOUT_S``,
  ``GUARDGRAPH_GUARD_BATCH_WINDOW_MS``
- ``GUARDGRAPH_CHAT_MODEL``, ``GUARDGRAPH_CHAT_ENDPOINT``, ``GUARDGRAPH_API_KEY``,
  ``GUARDGRAPH_MAX_NEW_TOKENS``
- ``GUARDGRAPH_SYSTEM_PROMPT`` (empty: none), ``GUARDGRAPH_WINDOW_TURNS``, ``GUARDGRAPH_DESCRIPTIONS``
- ``GUARDGRAPH_FAIL_OPEN``, ``GUARDGRAPH_SHADOW``, ``GUARDGRAPH_AUDIT``, ``GUARDGRAPH_AUDIT_CONTENT``
- ``GUARDGRAPH_DB`` (your own workers only, see above)

What may differ per assistant or per run is the graph's context (``guardgraph.nodes.context.Context``):
``client.assistants.create(graph_id="guardgraph", context={"policy": "seed-custom"})`` serves the seed's
policy next to the default assistant's, from the same graph and models.

``GUARDGRAPH_SERVER_PRELOAD=true`` (set in ``langgraph.json``) starts building the graph in a background
thread as soon as the server imports this module, so the first run does not wait for the models.

``GUARDGRAPH_SERVER_FACTORY=package.module:function`` replaces the model setup: the function takes
no arguments and returns the :class:`guardgraph.graph.builder.GuardedChatDeps` to build the graph from
(tests use it to serve scripted models).
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import threading
from collections.abc import Mapping
from typing import Any

from langgraph.checkpoint.base import BaseCheckpointSaver

from guardgraph.graph.builder import GuardedChatDeps, GuardedChatGraph, build_graph
from guardgraph.graph.config import GuardGraphConfig

ENV_PREFIX = "GUARDGRAPH_"
FACTORY_ENV = "GUARDGRAPH_SERVER_FACTORY"
PRELOAD_ENV = "GUARDGRAPH_SERVER_PRELOAD"
DB_ENV = "GUARDGRAPH_DB"
TRUE_WORDS = frozenset({"1", "true", "yes", "on"})

logger = logging.getLogger(__name__)
_lock = threading.Lock()
_graph: GuardedChatGraph | None = None


def config_from_env(environ: Mapping[str, str] | None = None) -> GuardGraphConfig:
    """A :class:`GuardGraphConfig` from ``GUARDGRAPH_*`` variables (pydantic converts the strings)."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for name in GuardGraphConfig.model_fields:
        raw = environ.get(ENV_PREFIX + name.upper())
        if raw is None:
            continue
        if raw == "" and name == "system_prompt":
            values[name] = None
        elif raw != "":
            values[name] = raw
    return GuardGraphConfig(**values)


def _factory_deps(spec: str) -> GuardedChatDeps:
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ValueError(f"{FACTORY_ENV} must look like package.module:function, got {spec!r}")
    factory = getattr(importlib.import_module(module_name), attr)
    deps = factory()
    if not isinstance(deps, GuardedChatDeps):
        raise TypeError(f"{spec} returned {type(deps).__name__}, expected GuardedChatDeps")
    return deps


def build_server_graph(
    environ: Mapping[str, str] | None = None, checkpointer: BaseCheckpointSaver | None = None
) -> GuardedChatGraph:
    """Build a fresh graph from the environment; with ``checkpointer`` for workers outside the LangGraph server."""
    environ = os.environ if environ is None else environ
    spec = environ.get(FACTORY_ENV)
    if spec:
        deps = _factory_deps(spec)
    else:
        from guardgraph.graph.models.deps import build_deps

        deps = build_deps(config_from_env(environ))
    return build_graph(deps, checkpointer=checkpointer)


def get_graph() -> GuardedChatGraph:
    """The process's graph for the LangGraph server, built on first use, without a checkpointer."""
    global _graph
    if _graph is None:
        with _lock:
            if _graph is None:
                if os.environ.get(DB_ENV):
                    logger.warning(
                        "%s is set but not used: the LangGraph server keeps threads in its own database "
                        "(DATABASE_URI); %s is for worker processes that build the graph themselves",
                        DB_ENV,
                        DB_ENV,
                    )
                _graph = build_server_graph()
    return _graph


async def make_graph() -> GuardedChatGraph:
    """The LangGraph server's graph factory (see ``langgraph.json``)."""
    if _graph is not None:
        return _graph
    return await asyncio.to_thread(get_graph)


def __getattr__(name: str) -> Any:
    if name == "graph":
        return get_graph()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def preload() -> threading.Thread:
    """Build the graph in a background thread (errors surface again on the first real use)."""
    thread = threading.Thread(target=get_graph, name="guardgraph-preload", daemon=True)
    thread.start()
    return thread


if os.environ.get(PRELOAD_ENV, "").strip().lower() in TRUE_WORDS:
    preload()
