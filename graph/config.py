"""Settings shared by the CLI, the server export and notebooks: which models, policy and guard modes."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from guardgraph.nodes.guards.llama_guard.formats import get_format
from guardgraph.policies.loader import load_policy
from guardgraph.policies.model import Policy

DEFAULT_POLICY = "llama-guard-3"
# None: the chat model's own template supplies its default system prompt. (SmolLM2-135M, the offline
# default, answers "What is the capital of France?" with nonsense under a custom system prompt.)
DEFAULT_SYSTEM_PROMPT: str | None = None


class GuardGraphConfig(BaseModel):
    """Everything that selects models and behaviour; None means the offline default."""

    model_config = ConfigDict(extra="forbid")

    policy: str = DEFAULT_POLICY
    guard_format: str | None = None
    guard_model: str | None = None
    guard_endpoint: str | None = None
    chat_model: str | None = None
    chat_endpoint: str | None = None
    api_key: str | None = None
    system_prompt: str | None = DEFAULT_SYSTEM_PROMPT
    window_turns: int = Field(default=6, ge=1)
    descriptions: bool = True
    fail_open: bool = False
    shadow: bool = False
    guard_timeout_s: float = Field(default=60.0, gt=0)
    max_new_tokens: int = Field(default=256, ge=1)
    db: Path | None = None
    audit: Path | None = None
    audit_content: bool = False

    def load_policy(self) -> Policy:
        return load_policy(self.policy)

    def resolved_guard_format(self, policy: Policy) -> str:
        """The explicit format, else the policy's own, else Llama Guard 3's."""
        name = self.guard_format or policy.guard_format or "llama-guard-3"
        get_format(name)  # fail early on unknown names
        return name
