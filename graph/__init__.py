"""guardgraph's wiring and shells: the graph builder, the settings and model factories, the CLI, the server.

What an app embedding guardgraph needs is importable from here::

    from guardgraph.graph import GuardGraphConfig, build_checkpointer, build_deps, build_graph

    graph = build_graph(build_deps(GuardGraphConfig(policy="seed-custom")), build_checkpointer(None))
"""

from guardgraph.graph.builder import GuardedChatDeps, GuardedChatGraph, build_graph
from guardgraph.graph.config import GuardGraphConfig
from guardgraph.graph.models.chat import load_chat_model
from guardgraph.graph.models.checkpointers import aopen_persistence, build_checkpointer, open_persistence
from guardgraph.graph.models.deps import build_deps, guard_settings
from guardgraph.graph.models.guards import GUARD_BACKENDS, build_guard
from guardgraph.nodes.context import Context

__all__ = [
    "GUARD_BACKENDS",
    "Context",
    "GuardGraphConfig",
    "GuardedChatDeps",
    "GuardedChatGraph",
    "aopen_persistence",
    "build_checkpointer",
    "build_deps",
    "build_graph",
    "build_guard",
    "guard_settings",
    "load_chat_model",
    "open_persistence",
]
