"""The policy's thresholds, applied in one place to every guard's verdict.

A guard reports evidence: ``score``, the message's P(unsafe), and the categories it names.
:func:`apply_thresholds` decides with the policy's ``threshold`` and its categories' own ``threshold``:

* a named category is kept when its evidence reaches its threshold (the category's, else the policy's).
  Its evidence is its own probability when the guard gives one (``metadata["category_scores"]``, as the
  example classifier does), else the message's P(unsafe). So with a guard that gives one score for the
  whole message (every Llama Guard backend, the offline guard), a category's threshold means "flag this
  category, when the guard names it, from this P(unsafe) on";
* an unsafe verdict that names no category stays unsafe when P(unsafe) reaches the policy's threshold;
* an unsafe verdict whose categories all fall below their thresholds becomes safe;
* a verdict without a score (a server that returns no logprobs: its text decides), a safe verdict and an
  undecided one (error, unparseable) are left as they are, so thresholds never let an undecided check through.

For a threshold below the model's own decision point to take effect, a guard names categories as soon as
P(unsafe) reaches :func:`lowest_threshold`: the transformers backend continues its verdict as ``unsafe``
from there, ``LlamaGuard`` asks the other backends to continue after ``unsafe``, and the offline guard
names the hazards it sees. :class:`ThresholdGuard` wraps any guard with :func:`apply_thresholds`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

from guardgraph.nodes.checks.request import GuardRequest
from guardgraph.nodes.checks.verdict import Outcome, Verdict
from guardgraph.nodes.guards.base import Guard
from guardgraph.policies.model import Policy

CATEGORY_SCORES = "category_scores"  # metadata: per-category probabilities, where a guard has them
BELOW_THRESHOLD = "below_threshold"  # metadata: categories a guard named whose evidence fell short


def lowest_threshold(policy: Policy) -> float:
    """The lowest threshold in play: from this P(unsafe) on, a guard names the categories it sees."""
    return min([policy.threshold, *(c.threshold for c in policy.active_categories if c.threshold is not None)])


def reaches(policy: Policy, code: str | None, evidence: float) -> bool:
    """Whether ``evidence`` (a probability) reaches the threshold of category ``code`` (None: the policy's)."""
    return evidence >= policy.threshold_for(code)


def apply_thresholds(verdict: Verdict, policy: Policy) -> Verdict:
    """``verdict`` decided by the policy's thresholds (see the module doc)."""
    if verdict.outcome is not Outcome.UNSAFE or verdict.score is None:
        return verdict
    evidence: Mapping[str, float] = verdict.metadata.get(CATEGORY_SCORES) or {}
    if not verdict.categories:
        if reaches(policy, None, verdict.score):
            return verdict
        return verdict.with_updates(outcome=Outcome.SAFE, metadata={**verdict.metadata, BELOW_THRESHOLD: []})
    kept = tuple(hit for hit in verdict.categories if reaches(policy, hit.code, evidence.get(hit.code, verdict.score)))
    if len(kept) == len(verdict.categories):
        return verdict
    dropped = [hit.code for hit in verdict.categories if hit not in kept]
    metadata = {**verdict.metadata, BELOW_THRESHOLD: dropped}
    if kept:
        return verdict.with_updates(categories=kept, metadata=metadata)
    return verdict.with_updates(outcome=Outcome.SAFE, categories=(), metadata=metadata)


class ThresholdGuard:
    """Wraps any guard: every verdict goes through :func:`apply_thresholds` under its request's policy."""

    def __init__(self, inner: Guard) -> None:
        self.inner = inner
        self.name = inner.name

    def __getattr__(self, name: str) -> Any:  # window sizes, format, backend... are the inner guard's
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    def check(self, request: GuardRequest) -> Verdict:
        return self.check_batch([request])[0]

    def check_batch(self, requests: Sequence[GuardRequest]) -> list[Verdict]:
        verdicts = self.inner.check_batch(requests) if requests else []
        return [apply_thresholds(v, r.policy) for r, v in zip(requests, verdicts, strict=True)]

    async def acheck(self, request: GuardRequest) -> Verdict:
        return await asyncio.to_thread(self.check, request)


def with_thresholds(guard: Guard) -> Guard:
    """``guard`` wrapped in a :class:`ThresholdGuard` (once: wrapping twice is a no-op)."""
    return guard if isinstance(guard, ThresholdGuard) else ThresholdGuard(guard)
