"""Fit the offline guard's sentence head: one unsafe logit per role for a single sentence read alone.

Why: the main head was trained on whole messages and windows, and read on one sentence alone it misjudges
ordinary sentences of documents and answers, so the margin at which a sentence may decide a long text ends high
and a harmful sentence inside harmless padding rarely reaches it (``nodes/training/README.md``). The sentence head
reads the same pooled vector (the artifact's encoder is not changed) and is fit to what a sentence decides: a
harmful text has at least one harmful sentence, a harmless text has none. So each train-split row is a bag of its
sentences (:func:`bag`), each read alone as the guard reads it (``encode_sentence``), and a small network per role
(:data:`WIDTH` GELU units; 0: linear) is fit so that the bag's most harmful sentence predicts the bag's label
(multiple-instance learning with the max; class-balanced logistic loss, full-batch Adam with weight decay on the
standardized vectors). Only the train split's rows are used: the margins are then chosen on the
held-out rows by ``train.py --evaluate DIR --write-margins``.

    python -m guardgraph.nodes.training.sentence_head --datasets ../shared/datasets/train --artifact DIR \\
        --replies /tmp/replies.jsonl --cached-replies-only --windows 1500 --sentences 1500 --documents 1500 \\
        --alarming-windows 1500 --reply-sentences 1500

writes the head (``sentence_head.*``) into ``DIR/weights.safetensors`` and how it was fit into
``DIR/config.json`` (``sentence_head_fit``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from guardgraph.nodes.guards.offline.network import (
    SENTENCE_HEAD,
    SENTENCE_ROLES,
    GuardNet,
    SentenceHead,
    artifact_pooling,
    encode_sentence,
    length_batches,
    load_base,
    load_trained,
    pad_batch,
)
from guardgraph.nodes.guards.sentences import readable_sentences
from guardgraph.nodes.training.data import Example, checked_text, split
from guardgraph.nodes.training.train import build_examples

WIDTH = 64  # hidden GELU units per role (0: a linear head)
EPOCHS = 400
LEARNING_RATE = 3e-3
WEIGHT_DECAY = 1e-4


def bag(example: Example) -> list[str]:
    """The sentences of a row's checked text as the windowed guard reads them alone; the text itself when it is
    one sentence."""
    text = checked_text(example)
    return readable_sentences(text) or [text]


def pooled_vectors(
    net: GuardNet, items: Sequence[tuple[list[int], list[int]]], device: str = "cpu", batch: int = 32
) -> np.ndarray:
    """The network's pooled vector [n, hidden] for each encoded text."""
    out = np.zeros((len(items), net.head.in_features), dtype=np.float32)
    with torch.inference_mode():
        for chunk in length_batches([len(ids) for ids, _ in items], batch):
            inputs = pad_batch([items[i] for i in chunk], device)
            out[chunk] = net.pooled(net.lower(**inputs), inputs["attention_mask"]).float().cpu().numpy()
    return out


def fit_bag_max(
    vectors: np.ndarray,
    owner: np.ndarray,
    labels: np.ndarray,
    width: int = WIDTH,
    epochs: int = EPOCHS,
    seed: int = 0,
) -> nn.Module:
    """One role's head (:class:`SentenceHead`'s, ``width`` wide) whose maximum over each bag (``owner[i]``: the bag
    of vector ``i``) predicts the bag's label: class-balanced logistic loss on the bag's maximum, full-batch Adam
    with weight decay on the standardized vectors; returned reading the raw vectors (the standardization folded
    into its first layer)."""
    torch.manual_seed(seed)
    x = torch.tensor(vectors, dtype=torch.float32)
    mean, scale = x.mean(0), x.std(0) + 1e-6
    x = (x - mean) / scale
    bags = torch.tensor(owner, dtype=torch.long)
    y = torch.tensor(labels, dtype=torch.float32)
    positives = float(y.sum())
    if positives in (0.0, float(len(y))):
        raise ValueError("the sentence head needs harmful and harmless rows")
    balance = torch.where(y == 1, len(y) / (2 * positives), len(y) / (2 * (len(y) - positives)))
    head = SentenceHead(x.shape[1], width).roles[SENTENCE_ROLES[0]]
    assert isinstance(head, nn.Sequential)
    optimizer = torch.optim.Adam(head.parameters(), lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY)
    for _ in range(epochs):
        scores = head(x)[:, 0]
        worst = torch.full((len(y),), -1e9).scatter_reduce(0, bags, scores, reduce="amax")
        loss = nn.functional.binary_cross_entropy_with_logits(worst, y, weight=balance)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    first = head[0]
    assert isinstance(first, nn.Linear)
    with torch.no_grad():
        first.bias.sub_((first.weight * (mean / scale)).sum(1))
        first.weight.div_(scale)
    return head.eval()


def fit_sentence_head(
    net: GuardNet, tokenizer, rows: Sequence[Example], device: str = "cpu", width: int = WIDTH, epochs: int = EPOCHS
) -> tuple[SentenceHead, dict]:
    """The sentence head fit on ``rows`` (each role on its own rows), and a summary of what it was fit on."""
    head = SentenceHead(net.head.in_features, width)
    summary = {}
    for role in SENTENCE_ROLES:
        own = [e for e in rows if (e.response is None) == (role == "User") and checked_text(e).strip()]
        items, owner = [], []
        for k, example in enumerate(own):
            for sentence in bag(example):
                items.append(encode_sentence(tokenizer, role, sentence))
                owner.append(k)
        started = time.time()
        vectors = pooled_vectors(net, items, device)
        labels = np.array([e.label for e in own])
        head.roles[role] = fit_bag_max(vectors, np.array(owner), labels, width=width, epochs=epochs)
        summary[role] = {"rows": len(own), "unsafe_rows": int(labels.sum()), "sentences": len(items)}
        print(f"{role}: {len(own)} rows, {len(items)} sentences, {time.time() - started:.0f}s", flush=True)
    return head, summary


def write_sentence_head(artifact_dir: Path, head: SentenceHead, fit: dict) -> None:
    """Put the sentence head into the artifact's weights (replacing one it had) and record its fit in config.json."""
    path = artifact_dir / "weights.safetensors"
    tensors = {k: v for k, v in load_file(str(path)).items() if not k.startswith(SENTENCE_HEAD)}
    tensors.update({SENTENCE_HEAD + k: v.detach().float().contiguous() for k, v in head.state_dict().items()})
    save_file(tensors, str(path))
    config_path = artifact_dir / "config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**config, "sentence_head_fit": fit}, indent=1) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", type=Path, required=True, help="the train/ folder of the shared datasets")
    parser.add_argument("--artifact", type=Path, required=True, help="the artifact whose sentence head is fit")
    parser.add_argument("--replies", type=Path, required=True, help="the chat model's answers (train.py --replies)")
    parser.add_argument("--cached-replies-only", action="store_true", help="never run the chat model")
    parser.add_argument("--seed", type=int, default=13, help="which rows are drawn and held out (as train.py's)")
    parser.add_argument("--windows", type=int, default=0, help="as train.py's: padded requests and replies")
    parser.add_argument("--sentences", type=int, default=0, help="as train.py's: single harmless sentences")
    parser.add_argument("--documents", type=int, default=0, help="as train.py's: long harmless documents")
    parser.add_argument(
        "--alarming-windows", type=int, default=0, help="as train.py's: harmless texts with alarming words"
    )
    parser.add_argument("--reply-sentences", type=int, default=0, help="as train.py's: single harmless reply sentences")
    parser.add_argument("--width", type=int, default=WIDTH, help="hidden units per role (0: linear)")
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    if not (args.artifact / "weights.safetensors").is_file():
        parser.error(f"--artifact {args.artifact}: no weights.safetensors there")

    started = time.time()
    torch.set_num_threads(args.threads)
    examples = build_examples(
        args.datasets,
        args.replies,
        seed=args.seed,
        openers=400,
        compliance=False,
        cached_replies_only=args.cached_replies_only,
        threads=args.threads,
        windows=args.windows,
        sentences=args.sentences,
        documents=args.documents,
        alarming_windows=args.alarming_windows,
        reply_sentences=args.reply_sentences,
    )
    train, _ = split(examples, holdout=0.15, seed=args.seed)
    tokenizer, base = load_base(args.device)
    config = json.loads((args.artifact / "config.json").read_text())
    net = GuardNet(base, split=int(config["split"]), pooling=artifact_pooling(args.artifact)).to(args.device)
    load_trained(net, args.artifact)
    net.eval()
    head, summary = fit_sentence_head(net, tokenizer, train, args.device, args.width, args.epochs)
    fit = {
        "command": "python -m guardgraph.nodes.training.sentence_head " + " ".join(argv or sys.argv[1:]),
        "width": args.width,
        "epochs": args.epochs,
        "learning_rate": LEARNING_RATE,
        "weight_decay": WEIGHT_DECAY,
        "by_role": summary,
        "wall_seconds": round(time.time() - started, 1),
    }
    write_sentence_head(args.artifact, head, fit)
    print(f"sentence head written to {args.artifact} in {time.time() - started:.0f}s", flush=True)


if __name__ == "__main__":
    main()
