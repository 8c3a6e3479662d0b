"""A policy's own examples and counter-examples through a guard: what its author checks before shipping.

:func:`evaluate_policy` (behind ``guardgraph policy test``) checks every example and counter-example of
the policy's active categories as a one-message user conversation, through the guard and the policy's
example classifier (``guardgraph.nodes.guards.examples``), each under the policy *without that message*:
leave-one-out, so the classifier never learns from the message it is tested on (and, with ``few_shot``,
the guard's prompt does not show it either).

* An example is **caught** when the verdict names its category: by the **guard** (the guard model named
  the category itself), by the **examples** (the classifier's probability reached the category's
  threshold), or by **both**.
* A counter-example is **flagged** when the verdict blocks it (any category, or a guard that could not decide).
* The guard alone **ignores** a category when it names it for fewer than half of the category's examples:
  what the seed document's author found by hand for Llama Guard and the Amazon and cancer categories.
* The policy **passes** when every example is caught, no counter-example is flagged and the guard decided
  every message. Warnings do not fail it: a category nothing defines but its name, examples without
  counter-examples, a message listed twice, and every message the classifier could not place on its side
  (with the closest message of the other side). Duplicate category codes never get this far: the policy
  loader rejects them, naming the file and the codes.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np

from guardgraph.nodes.checks.request import GuardRequest, Turn
from guardgraph.nodes.checks.verdict import Outcome, Verdict
from guardgraph.nodes.evaluation.run import ProgressCallback, check_in_batches
from guardgraph.nodes.guards.base import Guard
from guardgraph.nodes.guards.examples import (
    EXAMPLE_CODES,
    EXAMPLE_SCORES,
    GUARD_CODES,
    GUARD_OUTCOME,
    GUARD_REASON,
    ExampleModels,
    shared_models,
    with_examples,
)
from guardgraph.policies.model import Category, Policy

ItemKind = Literal["example", "counter_example"]
UNDECIDED = (Outcome.ERROR.value, Outcome.UNPARSEABLE.value)


@dataclass(frozen=True)
class ItemResult:
    """One example or counter-example, checked with itself left out of the policy."""

    code: str
    kind: ItemKind
    text: str
    outcome: str
    codes: tuple[str, ...]
    flagged_by: str | None
    guard_outcome: str
    guard_codes: tuple[str, ...]
    example_codes: tuple[str, ...]
    example_score: float | None
    threshold: float
    reason: str | None = None  # the guard's, when it could not decide

    @property
    def by_guard(self) -> bool:
        """The guard model itself named this item's category."""
        return self.code in self.guard_codes

    @property
    def by_examples(self) -> bool:
        """The example classifier flagged this item's category (its probability reached the threshold)."""
        return self.code in self.example_codes

    @property
    def blocked(self) -> bool:
        return self.outcome not in (Outcome.SAFE.value, Outcome.BYPASS.value)

    @property
    def passed(self) -> bool:
        """An example whose category the verdict names; a counter-example that passes."""
        return self.code in self.codes if self.kind == "example" else not self.blocked

    @property
    def guard_undecided(self) -> bool:
        return self.guard_outcome in UNDECIDED

    def to_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "codes": list(self.codes),
            "guard_codes": list(self.guard_codes),
            "example_codes": list(self.example_codes),
            "by_guard": self.by_guard,
            "by_examples": self.by_examples,
            "passed": self.passed,
        }


@dataclass(frozen=True)
class CategoryResult:
    """One category's line of the table."""

    code: str
    name: str
    examples: int
    caught: int
    caught_by_guard_only: int
    caught_by_examples_only: int
    caught_by_both: int
    counter_examples: int
    flagged: int

    @property
    def guard_caught(self) -> int:
        """Examples whose category the guard model named itself."""
        return self.caught_by_guard_only + self.caught_by_both

    @property
    def ignored_by_guard(self) -> bool:
        """The guard alone names this category for fewer than half of its examples."""
        return self.examples > 0 and 2 * self.guard_caught < self.examples

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "guard_caught": self.guard_caught, "ignored_by_guard": self.ignored_by_guard}


@dataclass
class PolicyReport:
    """Everything ``guardgraph policy test`` prints (``to_dict`` is its ``--json``)."""

    policy: str
    guard: str
    categories: list[CategoryResult]
    items: list[ItemResult]
    untested: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ignored_by_guard(self) -> list[str]:
        return [c.code for c in self.categories if c.ignored_by_guard]

    @property
    def guard_undecided(self) -> list[ItemResult]:
        return [item for item in self.items if item.guard_undecided]

    @property
    def passed(self) -> bool:
        return all(item.passed for item in self.items) and not self.guard_undecided

    def to_dict(self) -> dict[str, Any]:
        return {
            "policy": self.policy,
            "guard": self.guard,
            "leave_one_out": True,
            "passed": self.passed,
            "examples": sum(c.examples for c in self.categories),
            "caught": sum(c.caught for c in self.categories),
            "counter_examples": sum(c.counter_examples for c in self.categories),
            "flagged": sum(c.flagged for c in self.categories),
            "guard_undecided": len(self.guard_undecided),
            "ignored_by_guard": self.ignored_by_guard,
            "categories": [c.to_dict() for c in self.categories],
            "items": [item.to_dict() for item in self.items],
            "untested": self.untested,
            "warnings": self.warnings,
        }


def leave_out(policy: Policy, code: str, kind: ItemKind, index: int) -> Policy:
    """``policy`` without the ``index``-th example (or counter-example) of category ``code``."""
    field_name = "examples" if kind == "example" else "counter_examples"
    categories = []
    for category in policy.categories:
        if category.code == code:
            texts = getattr(category, field_name)
            category = category.model_copy(update={field_name: texts[:index] + texts[index + 1 :]})
        categories.append(category)
    return policy.model_copy(update={"categories": tuple(categories)})


def tested_categories(policy: Policy) -> list[Category]:
    return [c for c in policy.active_categories if c.examples or c.counter_examples]


def evaluate_policy(
    guard: Guard,
    policy: Policy,
    batch_size: int = 8,
    progress: ProgressCallback | None = None,
) -> PolicyReport:
    """Check the policy's examples and counter-examples through ``guard``, leave-one-out (see the module doc).

    ``guard`` is wrapped with the example classifier if it is not already (as ``build_guard`` does).
    """
    guard = with_examples(guard)
    models: ExampleModels = getattr(guard, "models", None) or shared_models()
    plan: list[tuple[Category, ItemKind, str, Policy]] = []
    for category in tested_categories(policy):
        for kind, texts in (("example", category.examples), ("counter_example", category.counter_examples)):
            for index, text in enumerate(texts):
                plan.append((category, kind, text, leave_out(policy, category.code, kind, index)))  # type: ignore[arg-type]
    requests = [GuardRequest("User", (Turn("user", text),), left) for _, _, text, left in plan]
    verdicts = check_in_batches(guard, requests, batch_size, progress)
    items = [
        _item(category, kind, text, verdict, policy)
        for (category, kind, text, _), verdict in zip(plan, verdicts, strict=True)
    ]
    return PolicyReport(
        policy=policy.name,
        guard=getattr(guard, "name", type(guard).__name__),
        categories=[_category(c, items) for c in tested_categories(policy)],
        items=items,
        untested=[c.code for c in policy.active_categories if not (c.examples or c.counter_examples)],
        warnings=policy_warnings(policy) + inseparable(items, models) + undecided_warnings(items),
    )


def _item(category: Category, kind: ItemKind, text: str, verdict: Verdict, policy: Policy) -> ItemResult:
    scores = verdict.metadata.get(EXAMPLE_SCORES) or {}
    return ItemResult(
        code=category.code,
        kind=kind,
        text=text,
        outcome=verdict.outcome.value,
        codes=tuple(verdict.codes),
        flagged_by=verdict.flagged_by,
        guard_outcome=verdict.metadata.get(GUARD_OUTCOME, verdict.outcome.value),
        guard_codes=tuple(verdict.metadata.get(GUARD_CODES, verdict.codes)),
        example_codes=tuple(verdict.metadata.get(EXAMPLE_CODES, ())),
        example_score=scores.get(category.code),
        threshold=policy.threshold_for(category.code),
        reason=verdict.metadata.get(GUARD_REASON, verdict.reason),
    )


def _category(category: Category, items: Sequence[ItemResult]) -> CategoryResult:
    examples = [i for i in items if i.code == category.code and i.kind == "example"]
    counters = [i for i in items if i.code == category.code and i.kind == "counter_example"]
    caught = [i for i in examples if i.passed]
    return CategoryResult(
        code=category.code,
        name=category.name,
        examples=len(examples),
        caught=len(caught),
        caught_by_guard_only=sum(i.by_guard and not i.by_examples for i in caught),
        caught_by_examples_only=sum(i.by_examples and not i.by_guard for i in caught),
        caught_by_both=sum(i.by_guard and i.by_examples for i in caught),
        counter_examples=len(counters),
        flagged=sum(i.blocked for i in counters),
    )


def policy_warnings(policy: Policy) -> list[str]:
    """What a policy author would want to know from the file alone: undefined categories, lone examples,
    messages listed twice."""
    warnings: list[str] = []
    for c in policy.active_categories:
        if not (c.description or c.examples or c.covers):
            warnings.append(f"{c.code} ({c.name}): neither a description nor examples; an LLM guard sees only its name")
        if c.examples and not c.counter_examples:
            warnings.append(
                f"{c.code} ({c.name}): examples but no counter-examples; look-alikes are told apart only by "
                "the generic benign prompts"
            )
    places: dict[str, tuple[str, list[str]]] = {}  # the same text up to case and spacing -> (as first written, where)
    for c in policy.categories:
        for kind, texts in (("an example", c.examples), ("a counter-example", c.counter_examples)):
            for text in texts:
                places.setdefault(" ".join(text.lower().split()), (text, []))[1].append(f"{kind} of {c.code}")
    for text, where in places.values():
        if len(where) > 1:
            warnings.append(f'"{text}" is listed {len(where)} times: {", ".join(where)}')
    return warnings


def inseparable(items: Sequence[ItemResult], models: ExampleModels) -> list[str]:
    """The messages the example classifier put on the wrong side, each with the closest message of the other side."""
    wrong = [
        i
        for i in items
        if i.example_score is not None and (i.by_examples if i.kind == "counter_example" else not i.by_examples)
    ]
    warnings = []
    for item in wrong:
        side: ItemKind = "counter_example" if item.kind == "example" else "example"
        others = [i.text for i in items if i.code == item.code and i.kind == side]
        relation = "below" if item.kind == "example" else "at or above"
        shown = math.floor((item.example_score or 0.0) * 100) / 100  # 0.4998 is shown 0.49, not 0.50
        line = (
            f'{item.code}: the examples cannot separate the {item.kind.replace("_", "-")} "{item.text}" '
            f"(probability {shown:.2f}, {relation} the threshold {item.threshold:g})"
        )
        if others:
            vectors = models.embed([item.text, *others])
            similarity = vectors[1:] @ vectors[0]
            best = int(np.argmax(similarity))
            line += f'; closest {side.replace("_", "-")}: "{others[best]}" (similarity {similarity[best]:.2f})'
        warnings.append(line)
    return warnings


def undecided_warnings(items: Sequence[ItemResult]) -> list[str]:
    """One line per reason the guard could not decide (it fails the policy test: nothing was measured there)."""
    reasons = Counter(item.reason or item.guard_outcome for item in items if item.guard_undecided)
    return [f"the guard could not decide {n} of {len(items)} messages: {reason}" for reason, n in reasons.items()]
