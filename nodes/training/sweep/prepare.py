"""Prepare the folder a GPU sweep takes with it (``run.sh`` reads it):

    python -m guardgraph.nodes.training.sweep.prepare --datasets ../shared/datasets/train \
        --replies /tmp/replies.jsonl --out .sweep

- ``base/``: all-MiniLM-L6-v2's tokenizer and config with only the weights below the fine-tuned layers (the
  embeddings and the ``--split`` frozen layers), in float16: the fine-tuned layers come from the ``--init``
  artifact, and the network reads the base as float32 (``network.load_base``). 28 MB instead of 91, so the repository
  and this folder fit what a device call carries;
- ``train.tar.xz``: the train/ datasets; ``replies.jsonl``: the chat model's cached answers;
- ``whl/``: wheels of the packages the GPU machine's image lacks (pydantic and its own), at this environment's
  versions, unless ``--no-wheels``.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

from safetensors.torch import load_file, save_file

from guardgraph.nodes.shipped_models import minilm_dir

TOKENIZER_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")
MISSING_THERE = ("pydantic", "pydantic_core", "annotated_types", "typing_inspection", "typing_extensions")


def write_base(out: Path, split: int) -> None:
    """MiniLM's files with the weights below layer ``split`` only, floats in float16."""
    source = minilm_dir()
    out.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        shutil.copy(source / name, out / name)
    frozen = tuple(f"encoder.layer.{i}." for i in range(split))
    kept = {
        name: (tensor.half() if tensor.is_floating_point() else tensor).contiguous()
        for name, tensor in load_file(str(source / "model.safetensors")).items()
        if not name.startswith("encoder.layer.") or name.startswith(frozen)
    }
    save_file(kept, str(out / "model.safetensors"), metadata={"format": "pt"})


def download_wheels(out: Path) -> None:
    """Wheels for CPython 3.12 on x86-64 Linux of :data:`MISSING_THERE`, at this environment's versions."""
    pins = [f"{name}=={importlib.metadata.version(name)}" for name in MISSING_THERE]
    platforms = ["manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64"]
    command = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:"]
    command += ["--python-version", "3.12", "--implementation", "cp", "-d", str(out), *pins]
    for platform in platforms:
        command += ["--platform", platform]
    subprocess.run(command, check=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", type=Path, required=True, help="the train/ folder of the shared datasets")
    parser.add_argument("--replies", type=Path, required=True, help="train.py's --replies cache")
    parser.add_argument("--out", type=Path, required=True, help="the folder to write (ignored by git, carried)")
    parser.add_argument("--split", type=int, default=1, help="train.py's --split: the frozen layers kept")
    parser.add_argument("--wheels", action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args(argv)
    for path, what in ((args.datasets, "--datasets"), (args.replies, "--replies")):
        if not path.exists():
            parser.error(f"{what} {path}: not found")
    write_base(args.out / "base", args.split)
    with tarfile.open(args.out / "train.tar.xz", "w:xz") as archive:
        archive.add(args.datasets, arcname="train")
    shutil.copy(args.replies, args.out / "replies.jsonl")
    if args.wheels:
        download_wheels(args.out / "whl")
    size = sum(f.stat().st_size for f in args.out.rglob("*") if f.is_file())
    print(f"wrote {args.out} ({size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
