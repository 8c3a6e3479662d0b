"""Llama Guard as a prompt: render the request, ask a completion backend, parse the verdict.

Render, call and parse stay apart so every backend (transformers, an OpenAI-compatible server, any
LangChain model) shares the same prompt bytes and the same fail-closed parsing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from guardgraph.nodes import defaults
from guardgraph.nodes.checks.request import GuardRequest
from guardgraph.nodes.checks.verdict import Verdict
from guardgraph.nodes.guards.base import BaseGuard
from guardgraph.nodes.guards.llama_guard.formats import GuardFormat, get_format
from guardgraph.nodes.guards.llama_guard.parse import parse_verdict
from guardgraph.nodes.guards.llama_guard.render import last_text_end, render_parts, render_reply_lead


@dataclass(frozen=True)
class GuardPrompt:
    """A rendered prompt: ``prefix`` depends only on (format, policy, role) and can be cached.

    ``stable_chars`` is how much of ``suffix`` the next prompts of the same conversation are expected to
    start with (the conversation up to the end of its last message; None: all of it): what a backend keeps
    the keys and values of. It is a hint for caching only and never changes a verdict.
    """

    prefix: str
    suffix: str
    threshold: float = 0.5
    category_thresholds: Mapping[str, float] = field(default_factory=dict)
    stable_chars: int | None = None

    @property
    def text(self) -> str:
        return self.prefix + self.suffix


@dataclass(frozen=True)
class Completion:
    """What the model wrote after the prompt, and P(unsafe) at the verdict position when known."""

    text: str
    p_unsafe: float | None = None


class CompletionBackend(Protocol):
    """A model that continues rendered guard prompts.

    A backend may also offer ``warm(prompt, fmt)``: compute ahead, and keep, what reading ``prompt`` (a
    prompt's beginning, with no template tail) costs, for the complete prompts that will start with it.
    """

    name: str

    def complete(self, prompts: Sequence[GuardPrompt], fmt: GuardFormat) -> list[Completion]: ...


class LlamaGuard(BaseGuard):
    """A Llama Guard model (any version) behind any completion backend."""

    def __init__(
        self,
        backend: CompletionBackend,
        guard_format: GuardFormat | str = defaults.GUARD_FORMAT,
        descriptions: bool = True,
        name: str | None = None,
    ) -> None:
        self.backend = backend
        self.format = get_format(guard_format) if isinstance(guard_format, str) else guard_format
        self.descriptions = descriptions
        self.name = name or f"{self.format.name}:{backend.name}"

    def render(self, request: GuardRequest) -> GuardPrompt:
        prefix, suffix = render_parts(request, self.format, self.descriptions)
        policy = request.policy
        per_category = {c.code: c.threshold for c in policy.active_categories if c.threshold is not None}
        stable = last_text_end(suffix, request.role, self.format)
        return GuardPrompt(prefix, suffix, policy.threshold, per_category, stable)

    def warm(self, request: GuardRequest) -> None:
        """Let the backend compute ahead what every check of ``request``'s conversation with any last
        message reads first (the policy block and the conversation before that message), if it can."""
        warm = getattr(self.backend, "warm", None)
        if warm is not None:
            prefix, lead = render_reply_lead(request, self.format, self.descriptions)
            warm(GuardPrompt(prefix, lead, request.policy.threshold), self.format)

    def _check_batch(self, requests: Sequence[GuardRequest]) -> list[Verdict]:
        completions = self.backend.complete([self.render(r) for r in requests], self.format)
        return [self._verdict(r, c) for r, c in zip(requests, completions, strict=True)]

    def _verdict(self, request: GuardRequest, completion: Completion) -> Verdict:
        parsed = parse_verdict(completion.text, request.policy)
        return Verdict(
            role=request.role,
            outcome=parsed.outcome,
            categories=parsed.categories,
            score=completion.p_unsafe,
            guard=self.name,
            raw=completion.text,
            reason=parsed.reason,
        )
