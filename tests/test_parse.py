"""Verdict parsing for every version; anything unclear is UNPARSEABLE, never safe."""

from __future__ import annotations

import pytest

from guardgraph.nodes.checks.verdict import Outcome
from guardgraph.nodes.guards.llama_guard.parse import parse_verdict
from guardgraph.policies import Policy


@pytest.mark.parametrize(
    "text", ["safe", "\n\nsafe", " safe\n", "safe<|eot_id|>", "Safe", "safe</s>", "\n\nsafe<|eot|>"]
)
def test_safe(text: str, llama_guard_3_policy: Policy) -> None:
    assert parse_verdict(text, llama_guard_3_policy).outcome is Outcome.SAFE


@pytest.mark.parametrize(
    ("text", "codes"),
    [
        ("unsafe\nS1", ["S1"]),
        ("\n\nunsafe\nS1,S10<|eot_id|>", ["S1", "S10"]),
        ("unsafe\nS1, S10", ["S1", "S10"]),
        ("unsafe\ns9", ["S9"]),
        ("unsafe\nS2,S2", ["S2"]),
        ("unsafe\nS14<|eot|>", ["S14"]),
    ],
)
def test_unsafe_codes_map_to_policy_categories(text: str, codes: list[str], llama_guard_3_policy: Policy) -> None:
    parsed = parse_verdict(text, llama_guard_3_policy)
    assert parsed.outcome is Outcome.UNSAFE
    assert [hit.code for hit in parsed.categories] == codes


def test_category_names_come_from_the_policy(llama_guard_3_policy: Policy) -> None:
    parsed = parse_verdict("unsafe\nS11", llama_guard_3_policy)
    assert parsed.categories[0].name == "Self-Harm"


@pytest.mark.parametrize(("text", "code"), [("unsafe\n07", "O7"), ("unsafe\n08", "O8"), ("unsafe\nO7", "O7")])
def test_seed_zero_typo_reads_as_letter_o(text: str, code: str, seed_custom_policy: Policy) -> None:
    parsed = parse_verdict(text, seed_custom_policy)
    assert parsed.outcome is Outcome.UNSAFE
    assert [hit.code for hit in parsed.categories] == [code]
    assert parsed.categories[0].name in ("Financial Information related to Amazon", "Talk about Cancer")


def test_unsafe_without_codes_is_still_unsafe(llama_guard_3_policy: Policy) -> None:
    parsed = parse_verdict("unsafe", llama_guard_3_policy)
    assert parsed.outcome is Outcome.UNSAFE and parsed.categories == ()


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "<|eot_id|>",
        "I think this is fine",
        "safe-ish",
        "unsure",
        "The answer is safe",
        "sa fe",
        "unsafe\nS99",
        "unsafe\nX1",
        "safe\nS1",
        "safe\n\nS1,S2",
        "safe<|eot_id|>S1",
        "safe\nunsafe",
    ],
)
def test_anything_else_is_unparseable(text: str, llama_guard_3_policy: Policy) -> None:
    parsed = parse_verdict(text, llama_guard_3_policy)
    assert parsed.outcome is Outcome.UNPARSEABLE
    assert parsed.reason


def test_codes_of_excluded_categories_are_not_accepted(llama_guard_3_policy: Policy) -> None:
    parsed = parse_verdict("unsafe\nS2", llama_guard_3_policy.excluding("S2"))
    assert parsed.outcome is Outcome.UNPARSEABLE
