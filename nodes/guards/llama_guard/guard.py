"""Llama Guard as a prompt: render the request, ask a completion backend, parse the verdict.

Render, call and parse stay apart so every backend (transformers, an OpenAI-compatible server, any
LangChain model) shares the same prompt bytes and the same fail-closed parsing.

Categories below the model's own decision point: a policy may set thresholds lower than the P(unsafe) at
which the model writes ``unsafe``. Each prompt carries the lowest threshold in play; a backend that
scores a verdict ``safe`` at or above it is asked once more, with the prompt continued after ``unsafe``,
for the categories it would name (the transformers backend continues on its own; a chat model, which
cannot continue a prompt, gives ``unsafe`` with no category). The thresholds
themselves are applied by ``guardgraph.nodes.guards.thresholds``, the same for every guard.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Protocol

from guardgraph.nodes import defaults
from guardgraph.nodes.checks.request import GuardRequest
from guardgraph.nodes.checks.verdict import Outcome, Verdict
from guardgraph.nodes.guards.base import BaseGuard
from guardgraph.nodes.guards.llama_guard.formats import GuardFormat, get_format
from guardgraph.nodes.guards.llama_guard.parse import parse_verdict
from guardgraph.nodes.guards.llama_guard.render import last_text_end, render_parts, render_reply_lead
from guardgraph.nodes.guards.thresholds import lowest_threshold

UNSAFE_CONTINUATION = "unsafe\n"  # after the format's verdict lead: the model writes the categories next


@dataclass(frozen=True)
class GuardPrompt:
    """A rendered prompt: ``prefix`` depends only on (format, policy, role) and can be cached.

    ``threshold``: from this P(unsafe) on the backend names categories (the policy's lowest threshold).
    ``stable_chars`` is how much of ``suffix`` the next prompts of the same conversation are expected to
    start with (the conversation up to the end of its last message; None: all of it): what a backend keeps
    the keys and values of. It is a hint for caching only and never changes a verdict.
    """

    prefix: str
    suffix: str
    threshold: float = 0.5
    stable_chars: int | None = None

    @property
    def text(self) -> str:
        return self.prefix + self.suffix

    def continued(self, text: str) -> GuardPrompt:
        """The same prompt with ``text`` written after it, as if the model had written it."""
        return replace(self, suffix=self.suffix + text)


@dataclass(frozen=True)
class Completion:
    """What the model wrote after the prompt, and P(unsafe) at the verdict position when known."""

    text: str
    p_unsafe: float | None = None


class CompletionBackend(Protocol):
    """A model that continues rendered guard prompts.

    A backend whose model cannot be handed a prompt to continue as it stands (a chat model, which wraps the
    text in its own template) sets ``continues_prompts = False``; the attribute is optional. A backend may
    also offer ``warm(prompt, fmt)``: compute ahead, and keep, what reading ``prompt`` (a prompt's
    beginning, with no template tail) costs, for the complete prompts that will start with it.
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
        stable = last_text_end(suffix, request.role, self.format)
        return GuardPrompt(prefix, suffix, lowest_threshold(request.policy), stable)

    def warm(self, request: GuardRequest) -> None:
        """Let the backend compute ahead what every check of ``request``'s conversation with any last
        message reads first (the policy block and the conversation before that message), if it can."""
        warm = getattr(self.backend, "warm", None)
        if warm is not None:
            prefix, lead = render_reply_lead(request, self.format, self.descriptions)
            warm(GuardPrompt(prefix, lead, lowest_threshold(request.policy)), self.format)

    def _check_batch(self, requests: Sequence[GuardRequest]) -> list[Verdict]:
        prompts = [self.render(r) for r in requests]
        completions = self.backend.complete(prompts, self.format)
        below = [
            i
            for i, (request, prompt, completion) in enumerate(zip(requests, prompts, completions, strict=True))
            if completion.p_unsafe is not None
            and completion.p_unsafe >= prompt.threshold
            and parse_verdict(completion.text, request.policy).outcome is Outcome.SAFE
        ]
        if below and getattr(self.backend, "continues_prompts", True):
            continuation = self.format.verdict_lead + UNSAFE_CONTINUATION
            named = self.backend.complete([prompts[i].continued(continuation) for i in below], self.format)
            for i, codes in zip(below, named, strict=True):
                completions[i] = Completion(UNSAFE_CONTINUATION + codes.text.strip(), completions[i].p_unsafe)
        elif below:  # a chat model cannot be asked to continue a prompt: unsafe, its categories unknown
            for i in below:
                completions[i] = Completion(UNSAFE_CONTINUATION.strip(), completions[i].p_unsafe)
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
