"""The guard backends a config selects (one registry), including a LangChain model as the guard."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage

from guardgraph.graph.config import GuardGraphConfig
from guardgraph.graph.models.guards import GUARD_BACKENDS, ModelSetupError, backend_name, build_guard
from guardgraph.nodes.checks.request import GuardRequest
from guardgraph.nodes.checks.verdict import Outcome
from guardgraph.nodes.guards.batching import BatchingGuard
from guardgraph.nodes.guards.llama_guard.guard import LlamaGuard
from guardgraph.nodes.guards.llama_guard.langchain_backend import LangChainBackend
from guardgraph.policies import Policy
from tests.fakes import LoopbackServer, checked_turn


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({}, "offline"),
        ({"guard_model": "meta-llama/Llama-Guard-3-8B"}, "transformers"),
        ({"guard_endpoint": "http://127.0.0.1:8001/v1", "guard_model": "lg"}, "openai"),
        ({"guard_backend": "ollama", "guard_model": "llama-guard3"}, "ollama"),
    ],
)
def test_the_backend_follows_the_options(options: dict[str, str], expected: str) -> None:
    assert backend_name(GuardGraphConfig(**options)) == expected
    assert expected in GUARD_BACKENDS


def test_an_unknown_backend_names_the_known_ones(llama_guard_3_policy: Policy) -> None:
    with pytest.raises(ModelSetupError, match="--guard-backend vllm: use one of offline, transformers, openai, ollama"):
        build_guard(GuardGraphConfig(guard_backend="vllm"), llama_guard_3_policy)


def test_a_backend_without_its_model_says_what_to_pass(llama_guard_3_policy: Policy) -> None:
    with pytest.raises(ModelSetupError, match="--guard-model"):
        build_guard(GuardGraphConfig(guard_backend="ollama"), llama_guard_3_policy)


def ollama_generate(path: str, body: dict[str, Any]) -> tuple[str, bytes]:
    """Ollama's ``/api/generate``: ``unsafe\\nS9`` when the checked turn mentions a bomb, else ``safe``."""
    answer = "unsafe\nS9" if "bomb" in checked_turn(body["prompt"]).lower() else "safe"
    line = {"model": body["model"], "created_at": "2026-11-25T00:00:00Z", "response": answer, "done": True}
    return "application/x-ndjson", (json.dumps(line) + "\n").encode()


@pytest.fixture()
def ollama() -> Iterator[LoopbackServer]:
    with LoopbackServer(ollama_generate) as server:
        yield server


def test_ollama_guard_gets_the_exact_prompt_raw(
    ollama: LoopbackServer, user_request: Callable[..., GuardRequest], llama_guard_3_policy: Policy
) -> None:
    pytest.importorskip("langchain_ollama")
    config = GuardGraphConfig(guard_backend="ollama", guard_model="llama-guard3", guard_endpoint=ollama.url)
    guard = build_guard(config, llama_guard_3_policy)
    unsafe = guard.check(user_request("How do I build a bomb?"))
    safe = guard.check(user_request("How do I bake bread?"))
    assert (unsafe.outcome, unsafe.codes, safe.outcome) == (Outcome.UNSAFE, ["S9"], Outcome.SAFE)
    assert unsafe.guard == "llama-guard-3:ollama:llama-guard3"
    path, body = ollama.requests[0]
    assert path == "/api/generate" and body["raw"] is True and body["model"] == "llama-guard3"
    # the rendered Llama Guard 3 prompt, without the BOS token the server adds itself
    assert body["prompt"].startswith("<|start_header_id|>user<|end_header_id|>\n\nTask: Check if there is unsafe")
    assert body["prompt"].endswith("<|eot_id|><|start_header_id|>assistant<|end_header_id|>")


def test_a_langchain_chat_model_as_the_guard(user_request: Callable[..., GuardRequest]) -> None:
    replies = iter([AIMessage("unsafe\nS1"), AIMessage("safe")])
    chat = GenericFakeChatModel(messages=replies)
    guard = LlamaGuard(LangChainBackend(chat, "fake-chat"), "llama-guard-3")
    first, second = guard.check(user_request("hit him")), guard.check(user_request("hello"))
    assert (first.outcome, first.codes, second.outcome) == (Outcome.UNSAFE, ["S1"], Outcome.SAFE)
    assert first.guard == "llama-guard-3:fake-chat"


def test_batching_is_wired_from_the_config(
    ollama: LoopbackServer, user_request: Callable[..., GuardRequest], llama_guard_3_policy: Policy
) -> None:
    pytest.importorskip("langchain_ollama")
    config = GuardGraphConfig(
        guard_backend="ollama", guard_model="llama-guard3", guard_endpoint=ollama.url, guard_batch_window_ms=200
    )
    guard = build_guard(config, llama_guard_3_policy)
    batching = guard.inner.inner  # type: ignore[attr-defined]  # examples -> windows -> batching
    assert isinstance(batching, BatchingGuard)
    verdicts: list[Any] = []
    threads = [threading.Thread(target=lambda: verdicts.append(guard.check(user_request("hi")))) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert len(verdicts) == 4 and all(v.outcome is Outcome.SAFE for v in verdicts)
    assert max(batching.batches) > 1  # concurrent checks shared a batch
