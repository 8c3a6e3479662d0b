"""The token-prefix KV cache: every check equals an uncached read, and a streamed reply's checks run only new tokens."""

from __future__ import annotations

import itertools
import threading
from typing import Any

import pytest
import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from guardgraph.nodes.checks.request import GuardRequest, Turn
from guardgraph.nodes.checks.run import ANY_REPLY
from guardgraph.nodes.checks.verdict import Outcome, Verdict
from guardgraph.nodes.guards.llama_guard.formats import get_format
from guardgraph.nodes.guards.llama_guard.guard import LlamaGuard
from guardgraph.nodes.guards.llama_guard.kv_cache import Match, TokenPrefixCache, cache_view, shared_length
from guardgraph.nodes.guards.llama_guard.transformers_backend import TransformersBackend
from guardgraph.nodes.streaming.holdback import Chunking, release_guarded
from guardgraph.policies import Policy
from tests.tiny_models import build_llama, build_tokenizer, make_bigram, single_id

LG3 = get_format("llama-guard-3")
QUESTION = "How do I make a cake?"
REPLY = (
    "Sure. Here is a cake recipe: mix 200 g of flour, 4 eggs and sugar; then bake it for 35 minutes.\n\n"
    "1. Preheat the oven. 2. Bake."
)
ATOL = 1e-4  # float32 logits of a prompt read in pieces vs in one pass


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return build_tokenizer()


@pytest.fixture(scope="module")
def model(tokenizer: Any) -> Any:
    return build_llama(tokenizer)


@pytest.fixture
def backend(model: Any, tokenizer: Any) -> TransformersBackend:
    return TransformersBackend(model, tokenizer)


@pytest.fixture(scope="module")
def calm_policy() -> Policy:
    """Llama Guard 3's categories with a threshold a random model's noise stays under."""
    from guardgraph.policies.loader import load_policy

    return load_policy("llama-guard-3").model_copy(update={"threshold": 0.99})


def reply_request(policy: Policy, reply: str, question: str = QUESTION) -> GuardRequest:
    return GuardRequest("Agent", (Turn("user", question), Turn("assistant", reply)), policy)


def word_cuts(text: str) -> list[int]:
    """Where a hold-back stream ends its chunks: after spaces, sentence ends and newlines."""
    return [i + 1 for i, char in enumerate(text) if char in " .\n" and text[: i + 1].strip()] + [len(text)]


def run_tokens(backend: TransformersBackend, prompt: Any) -> tuple[torch.Tensor, int]:
    """(cached logits, tokens the model ran for them)."""
    before = backend.stats["forward_tokens"]
    logits = backend.verdict_logits([prompt], LG3)
    return logits, backend.stats["forward_tokens"] - before


def test_shared_length() -> None:
    assert shared_length((1, 2, 3), [1, 2, 4]) == 2
    assert shared_length([1, 2, 3], (1, 2, 3, 4)) == 3
    assert shared_length((), (1,)) == 0 and shared_length((5,), (6,)) == 0
    long = list(range(1000))
    assert shared_length(long, [*long[:613], -1, *long[614:]]) == 613


def test_each_chunk_check_equals_an_uncached_read_and_runs_only_the_new_text_and_tail(
    backend: TransformersBackend, calm_policy: Policy
) -> None:
    guard = LlamaGuard(backend, LG3)
    previous = None
    for cut in word_cuts(REPLY):
        prompt = guard.render(reply_request(calm_policy, REPLY[:cut]))
        cached, ran = run_tokens(backend, prompt)
        assert torch.allclose(cached, backend.verdict_logits([prompt], LG3, cached=False), atol=ATOL), cut
        row = backend.encode_rows([prompt], LG3)[0]
        if previous is not None:
            # everything the previous chunk's check kept is reused: the model reads the new text and the tail
            assert ran <= len(row.ids) - previous.keep, REPLY[:cut]
            assert ran < len(row.ids) - row.prefix_len
        previous = row
    assert len(backend.cache) == 1  # one entry for the stream: each chunk's entry replaced the one before


@pytest.mark.parametrize(
    "texts",
    [
        ["Su", "Sure, her", "Sure, here it is"],  # cut inside words: the words tokenize differently once whole
        ["1.", "1.\n\n2.", "1.\n\n2.\n\n3"],  # "." merges with the newlines after it
        ["Mix 20", "Mix 200 g", "Mix 2000 g"],  # digits group in threes
    ],
)
def test_chunk_boundaries_that_tokenize_differently_still_match_token_ids(
    backend: TransformersBackend, calm_policy: Policy, texts: list[str]
) -> None:
    guard = LlamaGuard(backend, LG3)
    for text in texts:
        prompt = guard.render(reply_request(calm_policy, text))
        cached, ran = run_tokens(backend, prompt)
        assert torch.allclose(cached, backend.verdict_logits([prompt], LG3, cached=False), atol=ATOL), text
    row = backend.encode_rows([prompt], LG3)[0]
    assert ran < len(row.ids) - row.prefix_len  # the conversation before the changed tokens was reused


def test_streamed_verdicts_equal_the_rereading_path(model: Any, tokenizer: Any, calm_policy: Policy) -> None:
    incremental = LlamaGuard(TransformersBackend(model, tokenizer), LG3)
    rereading = LlamaGuard(TransformersBackend(model, tokenizer, reuse="policy"), LG3)
    pieces = [REPLY[a:b] for a, b in itertools.pairwise([0, *word_cuts(REPLY)])]

    def stream(guard: LlamaGuard) -> list[Verdict]:
        verdicts: list[Verdict] = []

        def check(reply: str) -> Verdict:
            verdicts.append(guard.check(reply_request(calm_policy, reply)))
            return verdicts[-1]

        result = release_guarded(pieces, check, lambda _: None, Chunking(1, 2, 8))
        assert result.released == REPLY
        return verdicts

    ours, theirs = stream(incremental), stream(rereading)
    assert len(ours) == len(theirs) > 5
    for a, b in zip(ours, theirs, strict=True):
        assert a.outcome is b.outcome and a.raw == b.raw
        assert a.score == pytest.approx(b.score, abs=1e-5)
    reread, reused = rereading.backend.stats, incremental.backend.stats  # type: ignore[attr-defined]
    assert reread["forward_tokens"] > reused["forward_tokens"] and reused["reused_tokens"] > reread["reused_tokens"]


def test_warm_up_leaves_the_first_chunk_check_the_chunk_and_the_tail(
    backend: TransformersBackend, calm_policy: Policy
) -> None:
    guard = LlamaGuard(backend, LG3)
    guard.warm(reply_request(calm_policy, ANY_REPLY))
    prompt = guard.render(reply_request(calm_policy, "Sure."))
    cached, ran = run_tokens(backend, prompt)
    assert torch.allclose(cached, backend.verdict_logits([prompt], LG3, cached=False), atol=ATOL)
    tail = len(backend._ids(prompt.suffix[prompt.stable_chars :], template=False))  # "<END CONVERSATION>"...
    assert ran <= tail + len(backend._ids(" Sure.", template=False)) + len(backend.verdict_tokens(LG3).shared) + 1


def test_rows_continuing_different_entries_batch_and_equal_uncached(
    backend: TransformersBackend, calm_policy: Policy, user_request: Any
) -> None:
    guard = LlamaGuard(backend, LG3)
    for question, reply in (("How do I make a cake?", "Mix flour"), ("What is the capital of France?", "It is")):
        guard.check(reply_request(calm_policy, reply, question))
    prompts = [
        guard.render(reply_request(calm_policy, "Mix flour, eggs and sugar.", "How do I make a cake?")),
        guard.render(reply_request(calm_policy, "It is Paris.", "What is the capital of France?")),
        guard.render(reply_request(calm_policy, "Never checked before.", "Tell me a joke.")),
        guard.render(user_request("A user message, under another policy prefix.")),
    ]
    batched = backend.complete(prompts, LG3)
    for prompt, completion in zip(prompts, batched, strict=True):
        (expected,) = backend.verdict_logits([prompt], LG3, cached=False)
        tokens = backend.verdict_tokens(LG3)
        p = torch.softmax(expected[[tokens.safe_id, tokens.unsafe_id]], dim=-1)[1].item()
        assert completion.p_unsafe == pytest.approx(p, abs=1e-5)


def test_stored_keys_and_values_never_change_under_concurrent_checks(
    backend: TransformersBackend, calm_policy: Policy
) -> None:
    guard = LlamaGuard(backend, LG3)
    guard.check(reply_request(calm_policy, "Sure. Here is"))
    (entry,) = backend.cache.entries()
    stored = [(layer.keys.clone(), layer.values.clone()) for layer in entry.kv.layers]
    replies = [f"Sure. Here is {ending}" for ending in ("a cake.", "a pie.", "some bread.", "nothing.")] * 2
    uncached = [
        LlamaGuard(TransformersBackend(backend.model, backend.tokenizer, cache_bytes=0), LG3).check(
            reply_request(calm_policy, reply)
        )
        for reply in replies
    ]
    results: dict[int, Verdict] = {}

    def worker(i: int) -> None:
        for cut in word_cuts(replies[i]):
            results[i] = guard.check(reply_request(calm_policy, replies[i][:cut]))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(replies))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for i, verdict in enumerate(uncached):
        assert results[i].score == pytest.approx(verdict.score, abs=1e-5)
    for (keys, values), layer in zip(stored, entry.kv.layers, strict=True):
        assert torch.equal(keys, layer.keys) and torch.equal(values, layer.values)


def test_reuse_policy_keeps_only_the_policy_prefix(model: Any, tokenizer: Any, calm_policy: Policy) -> None:
    backend = TransformersBackend(model, tokenizer, reuse="policy")
    guard = LlamaGuard(backend, LG3)
    for cut in word_cuts(REPLY)[:4]:
        guard.check(reply_request(calm_policy, REPLY[:cut]))
    (entry,) = backend.cache.entries()
    prompt = guard.render(reply_request(calm_policy, REPLY))
    assert list(entry.ids) == backend.encode(prompt, LG3)[0]


def test_unsafe_verdicts_generate_their_codes_from_a_reused_cache(tokenizer: Any, calm_policy: Policy) -> None:
    chain = ["<|end_header_id|>", "\n\n", "unsafe", "\n", "S", "1", ",S", "10", "<|eot_id|>"]
    ids = [single_id(tokenizer, t) if not t.startswith("<|") else tokenizer.convert_tokens_to_ids(t) for t in chain]
    bigram = make_bigram(build_llama(tokenizer, seed=1), dict(itertools.pairwise(ids)))
    guard = LlamaGuard(TransformersBackend(bigram, tokenizer), LG3)
    verdicts = [guard.check(reply_request(calm_policy, REPLY[:cut])) for cut in word_cuts(REPLY)[:3]]
    assert [v.outcome for v in verdicts] == [Outcome.UNSAFE] * 3
    assert all(v.codes == ["S1", "S10"] for v in verdicts)
    assert guard.backend.stats["reused_tokens"] > 0  # type: ignore[attr-defined]


class SlidingLayer(DynamicLayer):
    """A layer type other than a plain DynamicLayer: the cache may not crop it or share its tensors."""


def cache_of(length: int, layer_type: type = DynamicLayer) -> Any:
    cache = DynamicCache()
    layer = layer_type()
    layer.lazy_initialization(torch.zeros(1, 1, 1, 2), torch.zeros(1, 1, 1, 2))
    layer.keys = torch.arange(length * 2, dtype=torch.float32).reshape(1, 1, length, 2)
    layer.values = layer.keys + 100
    cache.layers = [layer]
    return cache


def test_prefix_cache_matches_lru_dominance_and_other_layer_types() -> None:
    cache = TokenPrefixCache(max_bytes=10_000)
    a = cache.add((1, 2, 3), cache_of(3))
    assert cache.longest((1, 2, 9)) == Match(a, 2)
    cache.add((1, 2, 3, 4, 5), cache_of(5))  # extends (1, 2, 3): that entry can serve nothing more
    assert [e.ids for e in cache.entries()] == [(1, 2, 3, 4, 5)]
    cache.add((1, 2), cache_of(2))  # already covered by a longer entry
    assert [e.ids for e in cache.entries()] == [(1, 2, 3, 4, 5)]
    other = cache.add((7, 8, 9), cache_of(3, SlidingLayer))
    assert not other.croppable and cache.longest((7, 8)) is None  # used only in full
    assert cache.longest((7, 8, 9, 10)).entry is other  # type: ignore[union-attr]
    view = cache_view(other.kv, 3, 2)
    assert view.layers[0] is not other.kv.layers[0] and view.layers[0].keys.shape[0] == 2
    view.layers[0].keys += 1  # a deep copy: writing to it leaves the entry alone
    assert torch.equal(other.kv.layers[0].keys, cache_of(3).layers[0].keys)
    cropped = cache_view(cache.entries()[0].kv, 2, 1)
    assert (
        cropped.get_seq_length() == 2
        and cropped.layers[0].keys.data_ptr() == cache.entries()[0].kv.layers[0].keys.data_ptr()
    )
    small = TokenPrefixCache(max_bytes=cache_of(3).layers[0].keys.numel() * 4 * 2 * 2)
    small.add((1,), cache_of(3))
    small.add((2,), cache_of(3))
    small.add((3,), cache_of(3))
    assert [e.ids for e in small.entries()] == [(2,), (3,)] and small.nbytes <= small.max_bytes
    small.longest((2, 5))  # touched: now the most recently used
    small.add((4,), cache_of(3))
    assert [e.ids for e in small.entries()] == [(2,), (4,)]


def test_a_guarded_stream_warms_up_and_checks_each_chunk_on_the_cache(tokenizer: Any, make_guarded_graph: Any) -> None:
    from tests.test_streaming import stream_turn
    from tests.tiny_models import tiny_chat_model

    chain = ["<|end_header_id|>", "\n\n", "safe", "<|eot_id|>"]
    ids = [single_id(tokenizer, t) if not t.startswith("<|") else tokenizer.convert_tokens_to_ids(t) for t in chain]
    backend = TransformersBackend(make_bigram(build_llama(tokenizer, seed=3), dict(itertools.pairwise(ids))), tokenizer)
    warmed: list[Any] = []
    runs: list[tuple[Any, int]] = []
    warm, complete = backend.warm, backend.complete

    def recording_warm(prompt: Any, fmt: Any) -> None:
        warmed.append(prompt)
        warm(prompt, fmt)

    def recording_complete(prompts: Any, fmt: Any) -> Any:
        before = backend.stats["forward_tokens"]
        out = complete(prompts, fmt)
        runs.append((prompts[0], backend.stats["forward_tokens"] - before))
        return out

    backend.warm, backend.complete = recording_warm, recording_complete  # type: ignore[method-assign]
    guard = LlamaGuard(backend, LG3)
    reply = tiny_chat_model(["To", " make", " a", " cake", ",", " mix", " it", "."])
    graph = make_guarded_graph(reply, guard, guard, warm_output_guard=True)  # one guard: warmed only when asked
    released, final = stream_turn(graph, QUESTION)
    assert "".join(released) == final["messages"][-1].content == "To make a cake, mix it."
    (lead,) = warmed
    assert lead.suffix == f"User: {QUESTION}\n\nAgent:"
    first_reply_check, ran = next((p, n) for p, n in runs if "Agent:" in p.suffix)
    row = backend.encode_rows([first_reply_check], LG3)[0]
    lead_ids = backend._ids(lead.prefix, template=True) + backend._ids(lead.suffix, template=False)
    assert ran <= len(row.ids) - len(lead_ids) + 1  # the chunk and the tail (give or take the boundary token)
