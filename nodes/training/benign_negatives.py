"""The example classifier's generic benign negatives: the project's own safe prompts, embedded in each space an
encoder can write in, stored as tensors of the offline guard's artifact.

The example classifier (``guardgraph.nodes.guards.examples``) fits each example-defined category against these
prompts beside the policy's own counter-examples, and compares only embeddings of one space: a float32 or
bfloat16 encoder reads the ``float`` tensor, the int8 encoder the ``int8`` one. The prompts are the safe prompts
of ``contrast.yaml`` (nothing from the shared datasets), so the tensors can be rewritten without retraining:

    python -m guardgraph.nodes.training.benign_negatives --artifact nodes/guards/offline/artifact

``train.py`` writes them the same way into every artifact it saves.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from guardgraph.nodes.guards.examples import SentenceEncoder
from guardgraph.nodes.guards.offline.guard import DEFAULT_ARTIFACT, GENERIC_BENIGN
from guardgraph.nodes.training.data import generic_benign_texts

# The encoder precision whose embeddings make each space's tensor.
SPACE_PRECISION = {"float": "float32", "int8": "int8"}


def benign_negative_tensors(seed: int = 13) -> dict[str, torch.Tensor]:
    """The artifact tensors of the generic benign prompts (float16 rows of unit length), one per space."""
    texts = generic_benign_texts(seed=seed)
    tensors = {}
    for space, precision in SPACE_PRECISION.items():
        embeddings = SentenceEncoder(precision=precision).embed(texts)
        tensors[GENERIC_BENIGN[space]] = torch.from_numpy(embeddings).to(torch.float16).contiguous()
    return tensors


def write_benign_negatives(artifact: Path, seed: int = 13) -> None:
    """Rewrite ``artifact``'s benign-negative tensors, its other tensors unchanged."""
    path = artifact / "weights.safetensors"
    tensors = load_file(str(path))
    tensors.update(benign_negative_tensors(seed))
    save_file(tensors, str(path))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--artifact", type=Path, default=DEFAULT_ARTIFACT, help="offline guard artifact folder")
    parser.add_argument("--seed", type=int, default=13, help="which prompts are drawn (train.py's --seed)")
    args = parser.parse_args(argv)
    write_benign_negatives(args.artifact, args.seed)
    print(f"wrote {', '.join(GENERIC_BENIGN.values())} to {args.artifact / 'weights.safetensors'}")


if __name__ == "__main__":
    main()
