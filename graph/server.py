"""The guarded chat graph for the LangGraph server: ``langgraph dev``, ``langgraph up``, the Platform.

``langgraph.json`` names :func:`make_graph`, an async factory: the server calls it for each run, it
builds the graph once per process (off the event loop: loading models takes seconds) and then hands
back the same compiled graph. The graph is compiled WITHOUT a checkpointer: the server provides
persistence (in memory for ``langgraph dev``, Postgres in production) and threads. Python code can use
the same graph directly: ``from guardgraph.graph.server import graph`` (built on first access) or
:func:`get_graph`.

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
import os
import threading
from collections.abc import Mapping
from typing import Any

from guardgraph.graph.builder import GuardedChatDeps, GuardedChatGraph, build_graph
from guardgraph.graph.config import GuardGraphConfig

ENV_PREFIX = "GUARDGRAPH_"
FACTORY_ENV = "GUARDGRAPH_SERVER_FACTORY"
PRELOAD_ENV = "GUARDGRAPH_SERVER_PRELOAD"
# The server owns persistence: a checkpointer file makes no sense here.
SERVER_IGNORED_FIELDS = frozenset({"db"})
TRUE_WORDS = frozenset({"1", "true", "yes", "on"})

_lock = threading.Lock()
_graph: GuardedChatGraph | None = None


def config_from_env(environ: Mapping[str, str] | None = None) -> GuardGraphConfig:
    """A :class:`GuardGraphConfig` from ``GUARDGRAPH_*`` variables (pydantic converts the strings)."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for name in GuardGraphConfig.model_fields:
        raw = environ.get(ENV_PREFIX + name.upper())
        if raw is None or name in SERVER_IGNORED_FIELDS:
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


def build_server_graph(environ: Mapping[str, str] | None = None) -> GuardedChatGraph:
    """Build a fresh graph from the environment, without a checkpointer."""
    environ = os.environ if environ is None else environ
    spec = environ.get(FACTORY_ENV)
    if spec:
        deps = _factory_deps(spec)
    else:
        from guardgraph.graph.models.deps import build_deps

        deps = build_deps(config_from_env(environ))
    return build_graph(deps, checkpointer=None)


def get_graph() -> GuardedChatGraph:
    """The process's graph, built on first use."""
    global _graph
    if _graph is None:
        with _lock:
            if _graph is None:
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
