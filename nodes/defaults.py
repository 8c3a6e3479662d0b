"""The defaults every entry point shares (CLI, server, graph builder, guards), written once."""

from __future__ import annotations

# The policy a guard checks against when none is named: Llama Guard 3's own categories.
POLICY = "llama-guard-3"
# The Llama Guard prompt format used when neither the caller nor the policy names one.
GUARD_FORMAT = "llama-guard-3"
# How many of the latest turns a guard sees as context (widened to start with a user turn).
WINDOW_TURNS = 6
# Seconds one guard check may take before it counts as an error (which blocks: fail closed).
GUARD_TIMEOUT_S = 60.0
# The longest reply the chat model writes, in tokens.
MAX_NEW_TOKENS = 256
