"""Everything a graph needs, built from one config: guards, the chat model, the policy, guard settings."""

from __future__ import annotations

from guardgraph.graph.builder import GuardedChatDeps
from guardgraph.graph.config import GuardGraphConfig
from guardgraph.graph.models.chat import chat_model_for
from guardgraph.graph.models.guards import build_guard, enforce_policy
from guardgraph.nodes.checks.audit import AuditLog
from guardgraph.nodes.checks.run import GuardSettings
from guardgraph.nodes.guards.base import Guard


def guard_settings(config: GuardGraphConfig, audit: AuditLog | None = None) -> GuardSettings:
    """The guard settings a config asks for: window, fail-open, shadow, timeout and audit log."""
    if audit is None and config.audit is not None:
        audit = AuditLog(config.audit, include_content=config.audit_content)
    return GuardSettings(
        window_turns=config.window_turns,
        fail_open=config.fail_open,
        shadow=config.shadow,
        timeout_s=config.guard_timeout_s,
        audit=audit,
    )


def build_deps(config: GuardGraphConfig, guard: Guard | None = None) -> GuardedChatDeps:
    """Load the policy and models for ``config``; one guard instance serves both roles: ``guard`` if given
    (through the same combinators as a built one), else the one the config selects."""
    policy = config.load_policy()
    guard = enforce_policy(guard) if guard is not None else build_guard(config, policy)
    settings = guard_settings(config)
    return GuardedChatDeps(
        chat_model=chat_model_for(config),
        input_guard=guard,
        output_guard=guard,
        policy=policy,
        input_settings=settings,
        output_settings=settings,
        system_prompt=config.system_prompt,
    )
