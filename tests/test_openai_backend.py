"""The OpenAI-compatible completions backend: request fields, BOS handling, P(unsafe) from logprobs."""

from __future__ import annotations

import math
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest
from langchain_core.language_models.fake import FakeListLLM

from guardgraph.nodes.checks.request import GuardRequest
from guardgraph.nodes.checks.verdict import Outcome
from guardgraph.nodes.guards.llama_guard.guard import LlamaGuard
from guardgraph.nodes.guards.llama_guard.langchain_backend import LangChainBackend
from guardgraph.nodes.guards.llama_guard.openai_backend import (
    VLLM_EXTRA_BODY,
    OpenAICompletionBackend,
    p_unsafe_from_logprobs,
    p_unsafe_from_top_logprobs,
    strip_bos,
)


@pytest.fixture
def cake_request(user_request: Callable[..., GuardRequest]) -> GuardRequest:
    """The one-turn User request the backend tests check."""
    return user_request("How do I make a cake?")


def lp(p: float) -> float:
    return math.log(p)


def test_p_unsafe_is_the_softmax_over_the_two_verdict_words() -> None:
    assert p_unsafe_from_top_logprobs({"safe": lp(0.6), "unsafe": lp(0.2), "The": lp(0.1)}) == pytest.approx(0.25)
    # first pieces and leading spaces count for their word; ambiguous or unrelated pieces do not
    top = {" safe": lp(0.3), "sa": lp(0.1), "un": lp(0.1), "uns": lp(0.1), "": lp(0.1), "x": lp(0.1)}
    assert p_unsafe_from_top_logprobs(top) == pytest.approx(0.2 / 0.6)
    # single letters (the S of a category code) and other casings are not verdict words
    assert p_unsafe_from_top_logprobs({"S": lp(0.5), "s": lp(0.2), "Safe": lp(0.1), "u": lp(0.1)}) is None
    assert p_unsafe_from_top_logprobs({"unsafe": lp(0.9)}) == 1.0
    assert p_unsafe_from_top_logprobs({"Hello": lp(0.9)}) is None
    assert p_unsafe_from_top_logprobs({}) is None


def test_the_verdict_position_skips_the_whitespace_lead() -> None:
    logprobs = {
        "tokens": ["\n\n", "unsafe", "\n", "S1"],
        "token_logprobs": [lp(0.99), lp(0.7), lp(0.9), lp(0.8)],
        "top_logprobs": [{"\n\n": lp(0.99)}, {"unsafe": lp(0.7), "safe": lp(0.3)}, {"\n": lp(0.9)}, {"S1": lp(0.8)}],
    }
    assert p_unsafe_from_logprobs(logprobs) == pytest.approx(0.7)
    # a server that lists no alternatives: the chosen token alone decides
    assert p_unsafe_from_logprobs({"tokens": ["safe"], "token_logprobs": [lp(0.8)], "top_logprobs": [None]}) == 0.0
    assert p_unsafe_from_logprobs({"tokens": ["I", " cannot"], "top_logprobs": [{"I": lp(0.5)}, {}]}) is None
    assert p_unsafe_from_logprobs(None) is None
    assert p_unsafe_from_logprobs({"tokens": ["\n"], "top_logprobs": [{"\n": 0.0}]}) is None


def test_strip_bos() -> None:
    assert strip_bos("<|begin_of_text|><|start_header_id|>user") == "<|start_header_id|>user"
    assert strip_bos("<s>[INST] x") == "[INST] x"
    assert strip_bos("[INST] x") == "[INST] x"


class StubCompletions:
    def __init__(self, text: str, logprobs: Any) -> None:
        self.text, self.logprobs = text, logprobs
        self.requests: list[dict[str, Any]] = []

    def create(self, **request: Any) -> Any:
        self.requests.append(request)
        return SimpleNamespace(choices=[SimpleNamespace(text=self.text, logprobs=self.logprobs)])


def stub_backend(text: str, logprobs: Any = None, **kwargs: Any) -> tuple[OpenAICompletionBackend, StubCompletions]:
    completions = StubCompletions(text, logprobs)
    backend = OpenAICompletionBackend(
        "http://127.0.0.1:1/v1", "guard", client=SimpleNamespace(completions=completions), **kwargs
    )
    return backend, completions


def test_request_fields_by_default(cake_request: GuardRequest) -> None:
    logprobs = {"tokens": ["\n\n", "unsafe"], "top_logprobs": [{}, {"unsafe": lp(0.8), "safe": lp(0.2)}]}
    backend, completions = stub_backend("\n\nunsafe\nS1", logprobs)
    verdict = LlamaGuard(backend).check(cake_request)
    assert verdict.outcome is Outcome.UNSAFE and verdict.codes == ["S1"]
    assert verdict.score == pytest.approx(0.8)
    (request,) = completions.requests
    assert request["model"] == "guard" and request["temperature"] == 0 and request["logprobs"] == 20
    assert "extra_body" not in request  # nothing a strict server would reject
    assert request["prompt"].startswith("<|start_header_id|>user")  # the server adds the one BOS


def test_vllm_mode_keeps_the_prompt_whole(cake_request: GuardRequest) -> None:
    backend, completions = stub_backend("\n\nsafe", None, bos="keep", extra_body=VLLM_EXTRA_BODY, top_logprobs=0)
    verdict = LlamaGuard(backend).check(cake_request)
    assert verdict.outcome is Outcome.SAFE and verdict.score is None
    (request,) = completions.requests
    assert request["prompt"].startswith("<|begin_of_text|>")
    assert request["extra_body"] == {"add_special_tokens": False}
    assert "logprobs" not in request


def test_batches_keep_their_order(user_request: Callable[..., GuardRequest]) -> None:
    backend, completions = stub_backend("safe")
    requests = [user_request(f"message {i}") for i in range(6)]
    verdicts = LlamaGuard(backend).check_batch(requests)
    assert [v.outcome for v in verdicts] == [Outcome.SAFE] * 6
    assert sorted(r["prompt"] for r in completions.requests) == sorted(
        strip_bos(LlamaGuard(backend).render(r).text) for r in requests
    )


def test_langchain_backend_reads_generation_logprobs(cake_request: GuardRequest) -> None:
    class LogprobLLM(FakeListLLM):
        def _generate(self, prompts: list[str], *args: Any, **kwargs: Any) -> Any:
            result = super()._generate(prompts, *args, **kwargs)
            for generations in result.generations:
                generations[0].generation_info = {
                    "logprobs": {"tokens": ["unsafe"], "top_logprobs": [{"unsafe": lp(0.6), "safe": lp(0.4)}]}
                }
            return result

    verdict = LlamaGuard(LangChainBackend(LogprobLLM(responses=["unsafe\nS2"]))).check(cake_request)
    assert verdict.codes == ["S2"] and verdict.score == pytest.approx(0.6)
    plain = LlamaGuard(LangChainBackend(FakeListLLM(responses=["safe"]))).check(cake_request)
    assert plain.outcome is Outcome.SAFE and plain.score is None
