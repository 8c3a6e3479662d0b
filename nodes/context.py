"""What may vary per run or per assistant, read by the nodes through ``Runtime[Context]``.

The graph's static dependencies (models, guards, the default policy, the deployment's guard settings)
are closed over when it is built; a run may choose, within them:

- ``policy``: a bundled policy name or a policy file, instead of the graph's own. An unknown name is an
  error that fails the run; it never falls back to a weaker default.
- ``stream_tokens``: check the reply chunk by chunk as it streams (default) or once when complete.
- ``system_prompt``: the chat model's system prompt for this run (default: the graph's).
- ``guard_timeout_s``: a shorter bound on one guard check than the deployment's (never a longer one).

With the LangGraph server, an assistant's ``context`` sets them for every run of that assistant::

    client.assistants.create(graph_id="guardgraph", context={"policy": "seed-custom"})
"""

from __future__ import annotations

from langgraph.runtime import Runtime
from pydantic import BaseModel, ConfigDict, Field

from guardgraph.policies import Policy, load_policy


class Context(BaseModel):
    """Per-run settings (see the module doc); every field optional, unknown fields rejected."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    policy: str | None = None
    stream_tokens: bool = True
    system_prompt: str | None = None
    guard_timeout_s: float | None = Field(default=None, gt=0, allow_inf_nan=False)

    def resolve_policy(self, default: Policy) -> Policy:
        """The run's policy: the one named here (loaded once per file version), else ``default``."""
        return default if self.policy is None else load_policy(self.policy)

    def timeout(self, deployment_s: float | None) -> float | None:
        """The bound on one guard check: this run's, where it is shorter than the deployment's."""
        if self.guard_timeout_s is None:
            return deployment_s
        return self.guard_timeout_s if deployment_s is None else min(self.guard_timeout_s, deployment_s)


DEFAULT_CONTEXT = Context()


def run_context(runtime: Runtime[Context]) -> Context:
    """The run's context; a run given none gets the defaults."""
    context = runtime.context
    return context if isinstance(context, Context) else DEFAULT_CONTEXT


def thread_id(runtime: Runtime[Context]) -> str | None:
    """The LangGraph thread of the run (None without a checkpointer)."""
    info = runtime.execution_info
    return None if info is None else info.thread_id
