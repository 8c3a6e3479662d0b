"""What the guards cost, measured side by side in one run on this machine (``guardgraph bench``).

Every number is a ratio of two paths timed interleaved (A, B, A, B, ...) in the same process, medians
taken, so a busy machine slows both sides alike. The bench reports numbers; the goals they are held
against live in BENCHMARKS.md. Keys:

- ``llm_guard_check_speedup``: a Llama Guard check done the naive way (whole prompt, ``generate``
  the verdict) ÷ the optimized way (cached policy prefix, one forward pass over the conversation,
  P(unsafe) read at the verdict position). The guard model is a stand-in: a random-initialized Llama
  with SmolLM2-135M's shape (hidden 576, 30 layers, 9 heads, 3 kv heads, intermediate 1536) and
  SmolLM2's tokenizer plus the Llama 3 special tokens, policy ``llama-guard-3-descriptions``.
  Its verdicts mean nothing; only the time is measured. The naive path generates 3 tokens
  (``\\n\\n``, ``safe``, ``<|eot_id|>``), what a real Llama Guard 3 writes for a safe message.
- ``batch_speedup``: throughput of 64 checks in one ``check_batch`` ÷ the same 64 one by one, with
  the offline default guard; ``llm_batch_speedup`` the same with the stand-in Llama Guard.
- ``guarded_turn_ratio``: a guarded turn (graph, offline default guard both ways) ÷ the same chat model
  answering the same messages unguarded; ``llm_guarded_turn_ratio`` the same with the stand-in Llama
  Guard as both guards.
- ``long_check_ratio``: a check of a ~1,000-character message (once as the user's, once as a reply) by the
  offline default guard with its sentence evidence (each sentence of a longer text also read alone) ÷ the same
  guard without it (the windows alone, whatever the artifact ships), p50 of at least 21 interleaved rounds.
- ``ttft_ratio``: time to the first streamed reply text, guarded graph ÷ the chat model's own stream.
- ``cold_start_s``: a fresh ``guardgraph ask`` process, offline defaults, until it printed the answer
  (median of ``--repeats`` fresh processes, as every other key is a median of ``--repeats`` rounds).
- ``llm_stream_check_speedup``: the guard time of all hold-back checks of one streamed 512-token reply
  (``release_guarded`` with the graph's chunking), stand-in Llama Guard, every check re-reading the
  conversation and the reply so far (``reuse="policy"``) ÷ reusing the previous chunk's keys and values
  (the token-prefix KV cache). ``stream_check_speedup``: the same with the offline default guard, every
  window re-checked ÷ only the windows with new text (incremental windows).
- ``llm_stream_check_growth`` / ``stream_check_growth``: guard time per reply token at 512 tokens ÷ at 128
  tokens on the incremental path (1 is linear growth of a reply's total guard time); ``*_growth_reread``
  the same on the re-reading path. Each round streams a new conversation, so nothing is reused across rounds.
- ``example_category_check_ms``: what the example classifier adds to a check (policy ``seed-custom``, two
  example-defined categories): a check through ``ExampleGuard`` minus the same check of its guard alone,
  medians over distinct user messages (no embedding is reused), the guard answering at once, so nothing
  hides the classifier's cost. ``example_category_llm_ratio``: the same two checks with the stand-in Llama
  Guard as the guard (the classifier runs beside it), as a ratio; ``example_category_encoder_load_s`` and
  ``example_category_fit_s`` are the one-time costs of a policy's first check.
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

LLAMA3_SPECIALS = ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
STANDIN_POLICY = "llama-guard-3-descriptions"
STANDIN_FORMAT = "llama-guard-3"
SMOLLM2_135M_SHAPE: dict[str, Any] = {
    "hidden_size": 576,
    "intermediate_size": 1536,
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "max_position_embeddings": 8192,
    "rope_theta": 100000.0,
    "rms_norm_eps": 1e-5,
    "tie_word_embeddings": True,
}
USER_MESSAGES = [
    "How do I make a cake?",
    "What's the capital of France?",
    "Can you help me write a short cover letter for a marketing job at a small company?",
    "Tell me a joke about cats.",
    "Explain in simple terms why the sky is blue and why sunsets look red.",
    "Give me three ideas for a vegetarian dinner this week.",
    "How many legs does a spider have?",
    "What is a good way to learn Python if I already know some JavaScript?",
]
AGENT_REPLY = (
    "Sure. Mix 200 g of flour, 200 g of sugar, 4 eggs and 200 g of soft butter, pour the batter into a "
    "greased tin and bake it at 180 °C for about 35 minutes, until a skewer comes out clean."
)
# A message of about 1,000 characters in ordinary sentences, for ``long_check_ratio``.
LONG_MESSAGE = (
    "Hi Sam, thanks again for organising the trip last weekend. The cabin was even nicer than the photos, and "
    "the kids have not stopped talking about the lake. I have put the receipts for the groceries and the fuel "
    "in the shared folder, so you can see what everyone owes. The total came to a little under three hundred "
    "euros, which is less than we planned. Could you check whether the deposit for the cabin has come back? "
    "The owner said it would take about a week. On another note, my sister asked if we would go again in the "
    "autumn. She would like to bring her dog, so we should ask whether pets are allowed. I also found a "
    "shorter route over the pass that avoids the traffic near the bridge. It adds a few kilometres but saves "
    "almost an hour on a Friday evening. If you agree, I will book the same dates in October before they are "
    "gone. I can drive this time, and the forecast looks mild. Let me know what works for you and Priya. Have "
    "a good week, and say hello to everyone at the office from me."
)


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def interleaved(paths: dict[str, Callable[[int], Any]], repeats: int, warmup: int = 1) -> dict[str, list[float]]:
    """Time each path ``repeats`` times, alternating paths within every round (call index passed in)."""
    for i in range(warmup):
        for fn in paths.values():
            fn(i)
    times: dict[str, list[float]] = {name: [] for name in paths}
    for i in range(repeats):
        order = list(paths.items()) if i % 2 == 0 else list(reversed(paths.items()))
        for name, fn in order:
            started = time.perf_counter()
            fn(warmup + i)
            times[name].append(time.perf_counter() - started)
    return times


# --------------------------------------------------------------------------- the stand-in Llama Guard


def standin_tokenizer() -> Any:
    """SmolLM2's tokenizer (from the offline chat model, no download) plus the Llama 3 special tokens."""
    from transformers import AutoTokenizer

    from guardgraph.graph.models.offline_chat import is_prepared, offline_model_dir
    from guardgraph.nodes.shipped_models import smollm2_gguf_path

    if is_prepared():
        tokenizer = AutoTokenizer.from_pretrained(str(offline_model_dir()))
    else:
        gguf = smollm2_gguf_path()
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    tokenizer.add_special_tokens({"additional_special_tokens": LLAMA3_SPECIALS})
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def standin_guard_model(tokenizer: Any, seed: int = 0) -> Any:
    """A random-initialized Llama with SmolLM2-135M's shape: Llama Guard's cost profile, no weights."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.convert_tokens_to_ids("<|begin_of_text|>"),
        eos_token_id=tokenizer.convert_tokens_to_ids("<|eot_id|>"),
        pad_token_id=tokenizer.pad_token_id,
        **SMOLLM2_135M_SHAPE,
    )
    return LlamaForCausalLM(config).eval()


def standin_backends(model: Any, tokenizer: Any, reuse: str = "tokens") -> tuple[Any, Any]:
    """(naive, optimized) backends over the same model and tokenizer; ``reuse`` is the optimized one's cache reuse."""
    from guardgraph.nodes.guards.llama_guard.formats import get_format
    from guardgraph.nodes.guards.llama_guard.transformers_backend import TransformersBackend

    optimized = TransformersBackend(model, tokenizer, name="standin-135m", reuse=reuse)  # type: ignore[arg-type]
    lead = optimized.verdict_tokens(get_format(STANDIN_FORMAT)).lead_len
    naive = TransformersBackend(
        model, tokenizer, name="standin-135m-naive", mode="naive", naive_max_new_tokens=lead + 2
    )
    return naive, optimized


def _standin_policy() -> Any:
    from guardgraph.policies.loader import load_policy

    # A random model's P(unsafe) is noise: raise the threshold so benign turns pass as with the real model.
    return load_policy(STANDIN_POLICY).model_copy(update={"threshold": 0.99})


def bench_llm_guard_check(model: Any, tokenizer: Any, repeats: int = 4) -> dict[str, Any]:
    import torch

    from guardgraph.nodes.checks.request import GuardRequest, Turn
    from guardgraph.nodes.guards.llama_guard.formats import get_format
    from guardgraph.nodes.guards.llama_guard.guard import GuardPrompt
    from guardgraph.nodes.guards.llama_guard.render import render_parts

    fmt = get_format(STANDIN_FORMAT)
    policy = _standin_policy()

    def prompt(i: int) -> GuardPrompt:  # a message not checked before: no check reuses more than the policy
        message = USER_MESSAGES[i % len(USER_MESSAGES)] + (f" ({i})" if i >= len(USER_MESSAGES) else "")
        return GuardPrompt(*render_parts(GuardRequest("User", (Turn("user", message),), policy), fmt), policy.threshold)

    naive, optimized = standin_backends(model, tokenizer)
    prefix_ids, suffix_ids = optimized.encode(prompt(0), fmt)
    with torch.inference_mode():
        started = time.perf_counter()
        optimized.complete([prompt(0)], fmt)  # computes the prefix cache once
        first = time.perf_counter() - started
        times = interleaved(
            {
                "naive": lambda i: naive.complete([prompt(i)], fmt),
                "optimized": lambda i: optimized.complete([prompt(i)], fmt),
            },
            repeats,
        )
    naive_s, optimized_s = _median(times["naive"]), _median(times["optimized"])
    return {
        "llm_guard_check_speedup": naive_s / optimized_s,
        "llm_guard_check_naive_ms": naive_s * 1000,
        "llm_guard_check_optimized_ms": optimized_s * 1000,
        "llm_guard_first_check_ms": first * 1000,
        "llm_guard_prefix_tokens": len(prefix_ids),
        "llm_guard_suffix_tokens": len(suffix_ids),
    }


def _requests(policy: Any, n: int, tag: str = "") -> list[Any]:
    """``n`` User and Agent checks; each ``tag`` gives texts of the same length no check has read before."""
    from guardgraph.nodes.checks.request import GuardRequest, Turn

    out = []
    for i in range(n):
        text = f"{USER_MESSAGES[i % len(USER_MESSAGES)]} ({tag}{i})"
        if i % 2:
            out.append(
                GuardRequest("Agent", (Turn("user", text), Turn("assistant", f"{AGENT_REPLY} ({tag}{i})")), policy)
            )
        else:
            out.append(GuardRequest("User", (Turn("user", text),), policy))
    return out


def bench_batch(guard: Any, policy: Any, n: int, prefix: str, repeats: int = 1) -> dict[str, Any]:
    """Throughput of ``n`` checks in one ``check_batch`` ÷ one by one.

    Every round of each path checks texts of its own, so verdicts remembered by a guard (windows a stream
    already checked, a cached token prefix beyond the policy's) never stand in for a check.
    """
    import torch

    rounds = {
        (path, r): _requests(policy, n, f"{path[0]}{r}-") for path in ("single", "batched") for r in range(repeats)
    }
    with torch.inference_mode():
        guard.check_batch(_requests(policy, 2, "w-"))  # warm the policy's cached prefix
        times = interleaved(
            {
                "single": lambda r: [guard.check(request) for request in rounds["single", r]],
                "batched": lambda r: guard.check_batch(rounds["batched", r]),
            },
            repeats,
            warmup=0,
        )
    single_s, batched_s = _median(times["single"]), _median(times["batched"])
    return {
        f"{prefix}_speedup": single_s / batched_s,
        f"{prefix}_single_ms_per_check": single_s * 1000 / n,
        f"{prefix}_batched_ms_per_check": batched_s * 1000 / n,
        f"{prefix}_checks": n,
    }


def bench_long_check(repeats: int) -> dict[str, Any]:
    """A ~1,000-character message (User check, then the same text as a reply) checked by the offline guard with
    its sentence evidence ÷ by the same windows without it (two guards built side by side). Windows
    are not remembered between rounds (``incremental=False``): every round checks the text afresh."""
    import torch

    from guardgraph.nodes.checks.request import GuardRequest, Turn
    from guardgraph.nodes.defaults import POLICY
    from guardgraph.nodes.guards.offline.guard import OfflineGuard
    from guardgraph.nodes.guards.windowed import windowed
    from guardgraph.policies.loader import load_policy

    policy = load_policy(POLICY)
    requests = [
        GuardRequest("User", (Turn("user", LONG_MESSAGE),), policy),
        GuardRequest("Agent", (Turn("user", USER_MESSAGES[2]), Turn("assistant", LONG_MESSAGE)), policy),
    ]
    sentences = windowed(OfflineGuard(sentence_evidence={"User": 0.0, "Agent": 0.0}), incremental=False)
    windows_only = windowed(OfflineGuard(sentence_evidence={}), incremental=False)
    with torch.inference_mode():
        times = interleaved(
            {
                "sentences": lambda _: [sentences.check(r) for r in requests],
                "windows_only": lambda _: [windows_only.check(r) for r in requests],
            },
            repeats,
        )
    sentences_s, windows_s = _median(times["sentences"]), _median(times["windows_only"])
    return {
        "long_check_ratio": sentences_s / windows_s,
        "long_check_ms": sentences_s * 1000 / len(requests),
        "long_check_windows_only_ms": windows_s * 1000 / len(requests),
        "long_check_chars": len(LONG_MESSAGE),
        "long_check_rounds": repeats,
    }


# --------------------------------------------------------------------------- streamed replies

STREAM_TOKENS = (128, 512)
STREAM_PROMPT = "How do I bake a simple sponge cake?"
STREAM_SENTENCES = [
    "Preheat the oven to 180 degrees and grease a round tin with a little butter.",
    "Beat four eggs with 200 grams of sugar until the mixture is pale, thick and has doubled in volume.",
    "Sift 200 grams of flour with a teaspoon of baking powder, then fold it in gently with a spatula.",
    "Pour the batter into the tin and smooth the top.",
    "Bake for about 30 minutes, until the top springs back when you press it lightly.",
    "Let the cake cool in the tin for ten minutes, then turn it out onto a wire rack.",
    "Once it is cold, you can fill it with jam and whipped cream, or dust it with icing sugar.",
    "Keep it in an airtight box, where it stays fresh for two or three days.",
]


def stream_pieces(tokenizer: Any, tokens: int) -> list[str]:
    """A benign reply of exactly ``tokens`` tokens of ``tokenizer``, one piece per token, as a chat model streams it."""
    text, count = "", 0
    while True:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) >= tokens:
            return [tokenizer.decode([token]) for token in ids[:tokens]]
        text += STREAM_SENTENCES[count % len(STREAM_SENTENCES)] + " "
        count += 1


def stream_checks(guard: Any, policy: Any, pieces: list[str], user_text: str) -> tuple[int, bool]:
    """All hold-back checks of one streamed reply, as the chat node runs them: (checks, blocked)."""
    from langchain_core.messages import HumanMessage

    from guardgraph.nodes.checks.run import GuardSettings, check
    from guardgraph.nodes.streaming.holdback import Chunking, release_guarded

    messages = [HumanMessage(user_text)]
    settings = GuardSettings(timeout_s=None)
    count = 0

    def check_reply(reply: str) -> Any:
        nonlocal count
        count += 1
        return check(guard, "Agent", messages, policy, settings, reply=reply)

    result = release_guarded(pieces, check_reply, lambda _: None, Chunking())
    return count, result.blocked


def bench_stream(reread: Any, incremental: Any, policy: Any, tokenizer: Any, repeats: int, key: str) -> dict[str, Any]:
    """Guard time of one streamed reply's checks, re-reading ÷ incremental, at 128 and 512 reply tokens."""
    import torch

    pieces = {n: stream_pieces(tokenizer, n) for n in STREAM_TOKENS}
    checks: dict[int, int] = {}
    blocked: list[bool] = []

    def path(guard: Any, name: str, tokens: int) -> Callable[[int], None]:
        def run(i: int) -> None:  # a new conversation every call: nothing carries over between paths or rounds
            question = f"{STREAM_PROMPT} ({name}, {tokens} tokens, round {i})"
            count, was_blocked = stream_checks(guard, policy, pieces[tokens], question)
            checks[tokens] = count
            blocked.append(was_blocked)

        return run

    with torch.inference_mode():
        for guard in (reread, incremental):  # each path pays its policy prefix once, before the timing
            stream_checks(guard, policy, pieces[STREAM_TOKENS[0]][:2], STREAM_PROMPT)
        paths = {
            f"{name}_{n}": path(guard, name, n)
            for name, guard in (("reread", reread), ("incremental", incremental))
            for n in STREAM_TOKENS
        }
        times = interleaved(paths, repeats, warmup=0)
    seconds = {name: _median(values) for name, values in times.items()}
    small, large = STREAM_TOKENS

    def per_token_ms(name: str, tokens: int) -> float:
        return seconds[f"{name}_{tokens}"] * 1000 / tokens

    return {
        f"{key}_speedup": seconds[f"reread_{large}"] / seconds[f"incremental_{large}"],
        f"{key}_growth": per_token_ms("incremental", large) / per_token_ms("incremental", small),
        f"{key}_growth_reread": per_token_ms("reread", large) / per_token_ms("reread", small),
        **{
            f"{key}_{name}_ms_per_token_{n}": per_token_ms(name, n)
            for name in ("reread", "incremental")
            for n in STREAM_TOKENS
        },
        **{f"{key}_checks_{n}": checks[n] for n in STREAM_TOKENS},
        f"{key}_blocked_streams": sum(blocked),
    }


# --------------------------------------------------------------------------- example-defined categories


class InstantBackend:
    """A completion backend that says ``safe`` (P(unsafe) 0.01) at once: a guard that costs nothing."""

    name = "instant"

    def complete(self, prompts: Any, fmt: Any) -> list[Any]:
        from guardgraph.nodes.guards.llama_guard.guard import Completion

        return [Completion("safe", 0.01) for _ in prompts]


def _example_policy() -> Any:
    from guardgraph.policies.loader import load_policy

    # The stand-in's P(unsafe) is noise: a high threshold keeps it from writing categories (as in the other keys).
    return load_policy("seed-custom").model_copy(update={"threshold": 0.99})


def _with_and_without_examples(guard: Any, models: Any, policy: Any, checks: int) -> tuple[float, float]:
    """Median seconds of a check by ``guard`` alone and through ``ExampleGuard(guard)``, interleaved, each
    round on a new text (the classifier embeds it afresh)."""
    from guardgraph.nodes.checks.request import GuardRequest, Turn
    from guardgraph.nodes.guards.examples import ExampleGuard

    combined = ExampleGuard(guard, models)

    def request(i: int) -> Any:
        return GuardRequest("User", (Turn("user", f"{USER_MESSAGES[i % len(USER_MESSAGES)]} (question {i})"),), policy)

    times = interleaved(
        {"alone": lambda i: guard.check(request(i)), "examples": lambda i: combined.check(request(i))}, checks
    )
    return _median(times["alone"]), _median(times["examples"])


def bench_example_categories(checks: int) -> dict[str, Any]:
    """What the example classifier adds to a check of a guard that answers at once; its one-time costs."""
    from guardgraph.nodes.guards.examples import ExampleModels
    from guardgraph.nodes.guards.llama_guard.guard import LlamaGuard

    policy = _example_policy()
    models = ExampleModels()
    started = time.perf_counter()
    models.encoder.embed(["warm up"])
    loaded = time.perf_counter()
    models.for_policy(policy)
    fitted = time.perf_counter()
    guard = LlamaGuard(InstantBackend(), policy.guard_format or STANDIN_FORMAT)
    alone_s, with_examples_s = _with_and_without_examples(guard, models, policy, checks)
    return {
        "example_category_check_ms": (with_examples_s - alone_s) * 1000,
        "example_category_guard_alone_ms": alone_s * 1000,
        "example_category_checks": checks,
        "example_category_encoder_load_s": loaded - started,
        "example_category_fit_s": fitted - loaded,
    }


def bench_example_categories_llm(guard: Any, checks: int) -> dict[str, Any]:
    """A check of the stand-in Llama Guard through ``ExampleGuard`` ÷ the same check alone."""
    from guardgraph.nodes.guards.examples import ExampleModels

    policy = _example_policy()
    models = ExampleModels()
    models.for_policy(policy)
    alone_s, with_examples_s = _with_and_without_examples(guard, models, policy, checks)
    return {
        "example_category_llm_ratio": with_examples_s / alone_s,
        "example_category_llm_check_ms": alone_s * 1000,
        "example_category_llm_checks": checks,
    }


# --------------------------------------------------------------------------- whole turns


def _offline_deps(**settings: Any) -> Any:
    from guardgraph.graph.config import GuardGraphConfig
    from guardgraph.graph.models.deps import build_deps

    return build_deps(GuardGraphConfig(**settings))


def _chat_messages(deps: Any, text: str) -> list[Any]:
    from langchain_core.messages import HumanMessage, SystemMessage

    return ([SystemMessage(deps.system_prompt)] if deps.system_prompt else []) + [HumanMessage(text)]


def bench_turns(deps: Any, repeats: int, key: str) -> dict[str, Any]:
    """A guarded turn (graph) ÷ the same chat model answering the same messages unguarded."""
    from langchain_core.messages import HumanMessage

    from guardgraph.graph.builder import build_graph
    from guardgraph.nodes.context import Context

    graph = build_graph(deps)
    refused: list[bool] = []

    def guarded(i: int) -> None:
        config: Any = {"configurable": {"thread_id": uuid.uuid4().hex}}
        message = HumanMessage(USER_MESSAGES[i % len(USER_MESSAGES)])
        state = graph.invoke({"messages": [message]}, config, context=Context(stream_tokens=False))
        refused.append(bool(state.get("refused")))

    def unguarded(i: int) -> None:
        deps.chat_model.invoke(_chat_messages(deps, USER_MESSAGES[i % len(USER_MESSAGES)]))

    times = interleaved({"guarded": guarded, "unguarded": unguarded}, repeats)
    guarded_s, unguarded_s = _median(times["guarded"]), _median(times["unguarded"])
    return {
        key: guarded_s / unguarded_s,
        f"{key}_guarded_s": guarded_s,
        f"{key}_unguarded_s": unguarded_s,
        f"{key}_refused_turns": sum(refused),
    }


def bench_ttft(deps: Any, repeats: int) -> dict[str, Any]:
    """Time to the first streamed reply text: guarded graph ÷ the chat model's own stream.

    Both streams are read to the end (only the first text's time is kept), so no half-finished turn
    keeps generating in the background while the next one is timed. Both sides release text by the same
    rule (transformers' ``TextStreamer``), the guarded side through its own thread (``nodes/generation.py``),
    so the ratio is the cost of guarding, not of a different streamer.
    """
    from langchain_core.messages import HumanMessage

    from guardgraph.graph.builder import build_graph

    graph = build_graph(deps)
    firsts: dict[str, list[float]] = {"guarded": [], "unguarded": []}

    def guarded(i: int) -> None:
        config: Any = {"configurable": {"thread_id": uuid.uuid4().hex}}
        started, first = time.perf_counter(), None
        text = USER_MESSAGES[i % len(USER_MESSAGES)]
        for event in graph.stream({"messages": [HumanMessage(text)]}, config, stream_mode="custom"):
            if first is None and isinstance(event, dict) and event.get("guardgraph") == "token" and event.get("text"):
                first = time.perf_counter() - started
        firsts["guarded"].append(first if first is not None else float("nan"))

    def unguarded(i: int) -> None:
        started, first = time.perf_counter(), None
        for chunk in deps.chat_model.stream(_chat_messages(deps, USER_MESSAGES[i % len(USER_MESSAGES)])):
            if first is None and chunk.content:
                first = time.perf_counter() - started
        firsts["unguarded"].append(first if first is not None else float("nan"))

    interleaved({"guarded": guarded, "unguarded": unguarded}, repeats)
    guarded_s = _median(firsts["guarded"][-repeats:])
    unguarded_s = _median(firsts["unguarded"][-repeats:])
    return {
        "ttft_ratio": guarded_s / unguarded_s,
        "ttft_guarded_ms": guarded_s * 1000,
        "ttft_unguarded_ms": unguarded_s * 1000,
    }


def bench_cold_start(repeats: int = 1) -> dict[str, Any]:
    """A fresh ``guardgraph ask`` process with offline defaults, until it exits with the answer."""
    command = [
        sys.executable,
        "-m",
        "guardgraph.graph.cli.app",
        "ask",
        "--thread",
        f"bench-{uuid.uuid4().hex[:8]}",
        "Hello! What can you do?",
    ]
    root = Path(__file__).resolve().parent.parent
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        result = subprocess.run(command, cwd=root, capture_output=True, text=True, timeout=600)
        times.append(time.perf_counter() - started)
        if result.returncode != 0:
            raise RuntimeError(f"cold start failed ({result.returncode}): {result.stderr[-500:]}")
    return {"cold_start_s": _median(times)}


# --------------------------------------------------------------------------- the command


def machine() -> dict[str, Any]:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = float("nan")
    return {
        "cpu": cpu,
        "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "load_average_1m": load,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


LONG_CHECK_ROUNDS = 21  # single checks are short and noisy: more rounds than the turn comparisons
SECTIONS = ("llm", "batch", "long", "stream", "turns", "ttft", "cold", "examples")


def run_bench(
    sections: tuple[str, ...] = SECTIONS,
    repeats: int = 3,
    llm_batch: int = 16,
    log: Callable[[str], None] = lambda _: None,
    threads: int | None = None,
) -> dict[str, Any]:
    """Run the chosen sections; a section that cannot run records its error instead of a number."""
    from guardgraph.graph.models.torch_threads import THREADS_ENV, configure_torch_threads

    if threads is not None:
        os.environ[THREADS_ENV] = str(threads)  # the cold-start child process uses the same setting
    configure_torch_threads(threads)
    results: dict[str, Any] = {"machine": machine()}
    errors: dict[str, str] = {}
    standin: tuple[Any, Any] | None = None
    tokenizer: Any = None
    offline: Any = None

    def get_tokenizer() -> Any:
        nonlocal tokenizer
        if tokenizer is None:
            tokenizer = standin_tokenizer()
        return tokenizer

    def get_standin() -> tuple[Any, Any]:
        nonlocal standin
        if standin is None:
            standin = (standin_guard_model(get_tokenizer()), get_tokenizer())
        return standin

    def get_offline() -> Any:
        nonlocal offline
        if offline is None:
            offline = _offline_deps()
        return offline

    def llm_deps(**settings: Any) -> Any:
        from dataclasses import replace

        from guardgraph.graph.config import GuardGraphConfig
        from guardgraph.graph.models.deps import build_deps
        from guardgraph.nodes.guards.llama_guard.guard import LlamaGuard

        model, tokenizer = get_standin()
        guard = LlamaGuard(standin_backends(model, tokenizer)[1], STANDIN_FORMAT)
        deps = build_deps(GuardGraphConfig(policy=STANDIN_POLICY, **settings), guard=guard)
        return replace(deps, policy=_standin_policy())

    steps: list[tuple[str, Callable[[], dict[str, Any]]]] = []
    if "llm" in sections:
        steps.append(("llm", lambda: bench_llm_guard_check(*get_standin(), repeats=max(repeats, 3))))
    if "batch" in sections:
        steps.append(
            ("batch", lambda: bench_batch(get_offline().input_guard, get_offline().policy, 64, "batch", repeats))
        )

        def llm_batch_step() -> dict[str, Any]:
            from guardgraph.nodes.guards.llama_guard.guard import LlamaGuard

            model, tokenizer = get_standin()
            # the policy prefix alone is reused, as batching is measured: the one-by-one round would
            # otherwise leave every prompt cached for the batched one
            guard = LlamaGuard(standin_backends(model, tokenizer, reuse="policy")[1], STANDIN_FORMAT)
            return bench_batch(guard, _standin_policy(), llm_batch, "llm_batch", repeats)

        steps.append(("llm_batch", llm_batch_step))
    if "stream" in sections:

        def llm_stream_step() -> dict[str, Any]:
            from guardgraph.nodes.guards.llama_guard.guard import LlamaGuard
            from guardgraph.nodes.guards.windowed import WindowedGuard

            model, tokenizer = get_standin()
            reread, incremental = (
                WindowedGuard(LlamaGuard(standin_backends(model, tokenizer, reuse)[1], STANDIN_FORMAT), incremental=inc)
                for reuse, inc in (("policy", False), ("tokens", True))
            )
            return bench_stream(reread, incremental, _standin_policy(), tokenizer, repeats, "llm_stream_check")

        def offline_stream_step() -> dict[str, Any]:
            from guardgraph.nodes import defaults
            from guardgraph.nodes.guards.offline.guard import OfflineGuard
            from guardgraph.nodes.guards.windowed import WindowedGuard
            from guardgraph.policies.loader import load_policy

            guard = OfflineGuard.load_default()
            reread, incremental = WindowedGuard(guard, incremental=False), WindowedGuard(guard)
            policy = load_policy(defaults.POLICY)
            return bench_stream(reread, incremental, policy, get_tokenizer(), repeats, "stream_check")

        steps.append(("llm_stream", llm_stream_step))
        steps.append(("stream", offline_stream_step))
    if "long" in sections:
        steps.append(("long", lambda: bench_long_check(max(repeats, LONG_CHECK_ROUNDS))))
    if "turns" in sections:
        steps.append(("turns", lambda: bench_turns(get_offline(), repeats, "guarded_turn_ratio")))
        steps.append(("llm_turns", lambda: bench_turns(llm_deps(), repeats, "llm_guarded_turn_ratio")))
    if "ttft" in sections:
        steps.append(("ttft", lambda: bench_ttft(_offline_deps(max_new_tokens=48), max(repeats, 3))))

        def llm_ttft_step() -> dict[str, Any]:
            result = bench_ttft(llm_deps(max_new_tokens=48), max(repeats, 3))
            return {f"llm_{key}": value for key, value in result.items()}

        steps.append(("llm_ttft", llm_ttft_step))
    if "cold" in sections:
        steps.append(("cold", lambda: bench_cold_start(repeats)))
    if "examples" in sections:
        rounds = max(repeats, 3)

        def llm_examples_step() -> dict[str, Any]:
            from guardgraph.nodes.guards.llama_guard.guard import LlamaGuard

            model, tokenizer = get_standin()
            guard = LlamaGuard(standin_backends(model, tokenizer)[1], STANDIN_FORMAT)
            return bench_example_categories_llm(guard, rounds * 3)

        steps += [("examples", lambda: bench_example_categories(rounds * 10)), ("llm_examples", llm_examples_step)]
    for name, step in steps:
        log(f"bench: {name}...")
        started = time.perf_counter()
        try:
            results.update(step())
        except Exception as error:  # one missing piece must not hide the other numbers
            errors[name] = f"{type(error).__name__}: {error}"
        log(f"bench: {name} done in {time.perf_counter() - started:.1f}s")
    results["machine"]["load_average_1m_end"] = machine()["load_average_1m"]
    if errors:
        results["errors"] = errors
    return results
