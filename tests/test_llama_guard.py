"""LlamaGuard keeps render, call and parse apart; the prompt carries the lowest threshold in play."""

from __future__ import annotations

from collections.abc import Callable

from guardgraph.nodes.checks.request import GuardRequest, Turn
from guardgraph.nodes.checks.verdict import Outcome
from guardgraph.nodes.guards.llama_guard.guard import LlamaGuard
from guardgraph.policies import policy_from_data
from tests.fakes import ScriptedBackend


def test_prompt_carries_the_lowest_threshold_in_play() -> None:
    policy = policy_from_data(
        {
            "name": "strict-finance",
            "threshold": 0.4,
            "categories": [
                {"code": "S1", "name": "Violent Crimes"},
                {"code": "S2", "name": "Finance", "threshold": 0.2},
            ],
        },
        "inline",
    )
    prompt = LlamaGuard(ScriptedBackend(), "llama-guard-3").render(GuardRequest("User", (Turn("user", "hi"),), policy))
    assert prompt.threshold == 0.2  # from here on the backend names the categories it sees


def test_verdict_keeps_raw_text_score_and_guard_name(user_request: Callable[..., GuardRequest]) -> None:
    guard = LlamaGuard(ScriptedBackend("\n\nunsafe\nS10"), "llama-guard-3")
    verdict = guard.check(user_request("..."))
    assert verdict.outcome is Outcome.UNSAFE and verdict.codes == ["S10"]
    assert verdict.raw == "\n\nunsafe\nS10" and verdict.guard == "llama-guard-3:scripted"
    assert verdict.latency_ms > 0
