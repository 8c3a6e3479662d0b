"""Build the guard and chat models a config asks for; nothing here is a module-level global."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from langchain_core.language_models import BaseChatModel
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.checkpoint.memory import InMemorySaver

from guardgraph.graph.builder import GuardedChatDeps
from guardgraph.graph.config import GuardGraphConfig
from guardgraph.nodes.checks.audit import AuditLog
from guardgraph.nodes.guard_node import GuardNodeSettings
from guardgraph.nodes.guards.base import Guard
from guardgraph.nodes.guards.llama_guard.guard import LlamaGuard
from guardgraph.nodes.guards.windowed import windowed
from guardgraph.policies.model import Policy


class ModelSetupError(RuntimeError):
    """A model could not be built from the given options; the message says what to pass instead."""


def build_guard(config: GuardGraphConfig, policy: Policy) -> Guard:
    """Llama Guard behind an endpoint or transformers, or the offline default guard.

    Every guard comes wrapped in :class:`guardgraph.nodes.guards.windowed.WindowedGuard`, so a message longer
    than the guard's window is checked in overlapping windows instead of being truncated.
    """
    config.resolved_guard_format(policy)  # an unknown --guard-format is an error for every guard
    if config.guard_endpoint or config.guard_model:
        return windowed(_build_llama_guard(config, policy))
    return windowed(load_offline_guard())  # the offline guard declares the window its encoder reads


def _build_llama_guard(config: GuardGraphConfig, policy: Policy) -> Guard:
    guard_format = config.resolved_guard_format(policy)
    if config.guard_endpoint:
        if not config.guard_model:
            raise ModelSetupError("--guard-endpoint needs --guard-model NAME (the model the server serves)")
        from guardgraph.nodes.guards.llama_guard.openai_backend import OpenAICompletionBackend

        endpoint = OpenAICompletionBackend(
            config.guard_endpoint, config.guard_model, config.api_key, timeout_s=config.guard_timeout_s
        )
        return LlamaGuard(endpoint, guard_format, config.descriptions)
    if config.guard_model:
        from guardgraph.nodes.guards.llama_guard.transformers_backend import TransformersBackend

        local = TransformersBackend.from_pretrained(config.guard_model)
        return LlamaGuard(local, guard_format, config.descriptions)
    raise ModelSetupError("no guard model given")


def load_offline_guard() -> Guard:
    """The small guard shipped with guardgraph (runs on CPU, no network)."""
    try:
        from guardgraph.nodes.guards.offline.guard import OfflineGuard
    except ImportError as error:
        raise ModelSetupError(
            "no guard model given and the offline default guard is not available: pass --guard-model "
            "(a Llama Guard hub id or local path) or --guard-endpoint URL --guard-model NAME"
        ) from error
    return OfflineGuard.load_default()


def build_chat_model(config: GuardGraphConfig) -> BaseChatModel:
    """The chat model the config names: an endpoint, a hub id or local path, else offline SmolLM2."""
    from guardgraph.graph.models.chat import load_chat_model

    return load_chat_model(
        chat_model=config.chat_model,
        chat_endpoint=config.chat_endpoint,
        api_key=config.api_key,
        max_new_tokens=config.max_new_tokens,
    )


def build_checkpointer(db: Path | None) -> BaseCheckpointSaver:
    """In memory by default; a SQLite file with ``--db`` so threads survive restarts."""
    if db is None:
        return InMemorySaver()
    from langgraph.checkpoint.sqlite import SqliteSaver

    db.parent.mkdir(parents=True, exist_ok=True)
    # One connection shared by all threads is safe: SqliteSaver serializes every use of it under its own
    # lock (tests/test_persistence.py runs 16 threads x 20 turns on it); the timeout covers another
    # process holding the write lock.
    connection = sqlite3.connect(str(db), check_same_thread=False, timeout=30)
    saver = SqliteSaver(connection)
    saver.setup()
    # WAL (set by setup) + synchronous=NORMAL: commits survive a process crash; only an OS crash or power
    # loss may drop the last few, and each commit no longer waits for an fsync.
    connection.execute("PRAGMA synchronous=NORMAL")
    return saver


def guard_settings(config: GuardGraphConfig, audit: AuditLog | None = None) -> GuardNodeSettings:
    """The guard-node settings a config asks for: window, fail-open, shadow, timeout and audit log."""
    if audit is None and config.audit is not None:
        audit = AuditLog(config.audit, include_content=config.audit_content)
    return GuardNodeSettings(
        window_turns=config.window_turns,
        fail_open=config.fail_open,
        shadow=config.shadow,
        timeout_s=config.guard_timeout_s,
        audit=audit,
    )


def build_deps(config: GuardGraphConfig, guard: Guard | None = None) -> GuardedChatDeps:
    """Load the policy and models for ``config``; one guard instance serves both roles."""
    policy = config.load_policy()
    guard = windowed(guard) if guard is not None else build_guard(config, policy)
    settings = guard_settings(config)
    return GuardedChatDeps(
        chat_model=build_chat_model(config),
        input_guard=guard,
        output_guard=guard,
        policy=policy,
        input_settings=settings,
        output_settings=settings,
        system_prompt=config.system_prompt,
    )
