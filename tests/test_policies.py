"""Policies load from YAML all or nothing; errors name the file and the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from guardgraph.policies import PolicyError, bundled_policy_names, load_policy

EXPECTED_CODES = {
    "llama-guard-1": [f"O{i}" for i in range(1, 7)],
    "llama-guard-2": [f"S{i}" for i in range(1, 12)],
    "llama-guard-3": [f"S{i}" for i in range(1, 15)],
    "llama-guard-3-1b": [f"S{i}" for i in range(1, 14)],
    "llama-guard-4": [f"S{i}" for i in range(1, 15)],
    "seed-custom": [f"O{i}" for i in range(1, 9)],
}


@pytest.mark.parametrize(("name", "codes"), sorted(EXPECTED_CODES.items()))
def test_bundled_policies(name: str, codes: list[str]) -> None:
    assert name in bundled_policy_names()
    assert [c.code for c in load_policy(name).active_categories] == codes


def test_llama_guard_1_has_descriptions_and_self_harm_points_to_help() -> None:
    policy = load_policy("llama-guard-1")
    assert all(c.description for c in policy.categories)
    assert "988" in (policy.category("O6").refusal or "")  # type: ignore[union-attr]


def test_seed_policy_o7_o8() -> None:
    policy = load_policy("seed-custom")
    o7, o8 = policy.category("O7"), policy.category("O8")
    assert o7 is not None and o7.name == "Financial Information related to Amazon"
    assert o8 is not None and o8.name == "Talk about Cancer"
    assert o7.examples and o7.counter_examples and o8.examples and o8.counter_examples


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "mine.yaml"
    path.write_text(text)
    return path


def test_user_policy_by_path_with_exclusion(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        'name: mine\nexclude: [C2]\ncategories:\n  - {code: C1, name: Finance, examples: ["What is ACME\'s revenue?"]}\n'
        "  - {code: C2, name: Weather}\n",
    )
    policy = load_policy(str(path))
    assert [c.code for c in policy.active_categories] == ["C1"]
    assert policy.source == str(path)


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("name: x\ncategories:\n  - {code: S1}\n", "categories[0] (S1).name"),
        ("name: x\ncategories:\n  - {code: 7, name: Foo}\n", "categories[0] (7).code"),
        ("name: x\ncategories:\n  - {code: S1, name: A}\n  - {code: S1, name: B}\n", "duplicate codes"),
        ("name: x\ncategories:\n  - {code: S1, name: A, colour: red}\n", "categories[0] (S1).colour"),
        ("name: x\nexclude: [S9]\ncategories:\n  - {code: S1, name: A}\n", "S9"),
        ("name: x\ncategories: []\n", "categories"),
        ("categories:\n  - {code: S1, name: A}\n", "name"),
        ("name: x\nthreshold: 2\ncategories:\n  - {code: S1, name: A}\n", "threshold"),
        ("- just a list\n", "mapping"),
        ("name: x\ncategories: [\n", "not valid YAML"),
    ],
)
def test_malformed_policy_names_file_and_field(tmp_path: Path, text: str, field: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(PolicyError) as error:
        load_policy(str(path))
    assert str(path) in str(error.value)
    assert field in str(error.value)


def test_unknown_policy_lists_the_bundled_ones() -> None:
    with pytest.raises(PolicyError, match="llama-guard-3"):
        load_policy("no-such-policy")


def test_missing_policy_file() -> None:
    with pytest.raises(PolicyError, match="not found"):
        load_policy("/nonexistent/policy.yaml")
