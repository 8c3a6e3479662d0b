"""Settings shared by the CLI, the server and notebooks: which models, policy and guard modes.

One :class:`GuardGraphConfig` selects everything a deployment fixes; ``None`` means the offline
default. What may vary per run is the graph's ``Context`` (``guardgraph.nodes.context``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

from guardgraph.nodes import defaults
from guardgraph.nodes.guards.llama_guard.formats import UnknownFormatError, get_format
from guardgraph.policies.loader import PolicyError, load_policy
from guardgraph.policies.model import Policy


def file_path_problem(path: Path) -> str | None:
    """Why ``path`` cannot be a file guardgraph creates or appends to (its folders made as needed), or None."""
    if path.is_dir():
        return f"{path} is a directory, not a file"
    for folder in path.parents:
        if folder.exists():
            return None if folder.is_dir() else f"{folder} is not a directory"
    return None


class GuardGraphConfig(BaseModel):
    """Everything that selects models and behaviour; None means the offline default.

    ``guard_backend`` names the guard backend (see ``guardgraph.graph.models.guards``); None picks it
    from the other options: ``--guard-endpoint`` an OpenAI-compatible server, ``--guard-model`` local
    transformers weights, neither the offline guard. ``system_prompt`` None lets the chat model's own
    template supply its default (SmolLM2-135M, the offline default, answers poorly under a custom one).
    """

    model_config = ConfigDict(extra="forbid")

    policy: str = defaults.POLICY
    guard_backend: str | None = None
    guard_format: str | None = None
    guard_model: str | None = None
    guard_endpoint: str | None = None
    chat_model: str | None = None
    chat_endpoint: str | None = None
    api_key: str | None = None
    system_prompt: str | None = None
    window_turns: int = Field(default=defaults.WINDOW_TURNS, ge=1)
    descriptions: bool = True
    fail_open: bool = False
    shadow: bool = False
    guard_timeout_s: float = Field(default=defaults.GUARD_TIMEOUT_S, gt=0, allow_inf_nan=False)
    # Concurrent checks (a server's parallel runs) wait up to this long to share one batched guard call.
    guard_batch_window_ms: float = Field(default=0.0, ge=0, allow_inf_nan=False)
    max_new_tokens: int = Field(default=defaults.MAX_NEW_TOKENS, ge=1)
    # None: memory; a SQLite file's path; or postgresql://user@host:port/dbname (graph/models/checkpointers.py)
    db: str | None = None
    audit: Path | None = None
    audit_content: bool = False

    @field_validator("guard_endpoint", "chat_endpoint")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None:
            parts = urlsplit(value)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"{value!r} is not an http:// or https:// URL")
        return value

    @field_validator("db", mode="before")
    @classmethod
    def _db_text(cls, value: Any) -> Any:
        """A path object is taken as its text: ``db`` is a file path or a URL."""
        return os.fspath(value) if isinstance(value, os.PathLike) else value

    @field_validator("db")
    @classmethod
    def _db_file(cls, value: str | None) -> str | None:
        """A SQLite file must be a file guardgraph can create; a URL is checked when it is opened."""
        problem = None if value is None or "://" in value else file_path_problem(Path(value).expanduser())
        if problem:
            raise ValueError(problem)
        return value

    @field_validator("audit")
    @classmethod
    def _writable_file(cls, value: Path | None) -> Path | None:
        problem = None if value is None else file_path_problem(value)
        if problem:
            raise ValueError(problem)
        return value

    def load_policy(self) -> Policy:
        return load_policy(self.policy)

    def resolved_guard_format(self, policy: Policy) -> str:
        """The explicit format, else the policy's own, else the default format; unknown names fail early, a
        policy's naming its file."""
        if self.guard_format:
            get_format(self.guard_format)
            return self.guard_format
        name = policy.guard_format or defaults.GUARD_FORMAT
        try:
            get_format(name)
        except UnknownFormatError as error:
            raise PolicyError(f"{policy.source or policy.name}: guard_format: {error}") from None
        return name
