"""Run a guard over labeled rows and score it: predictions, per-file results and the predictions file.

A row is predicted ``unsafe`` iff its verdict blocks, ignoring a monitor-only policy's ``enforced=False``:
``unsafe``, ``unparseable`` and ``error`` all count as unsafe (fail closed). ``evaluate_file`` reads a
JSONL data set (``datasets.load_rows``), checks its rows in batches and scores them (``metrics``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from guardgraph.nodes.checks.request import GuardRequest
from guardgraph.nodes.checks.verdict import Outcome, Verdict, undecided_verdict
from guardgraph.nodes.evaluation.datasets import EvalRow, Label, LoadedRows, load_rows
from guardgraph.nodes.evaluation.metrics import EvalMetrics, compute_metrics, precision_recall_curve
from guardgraph.nodes.guards.base import Guard
from guardgraph.policies.model import Policy

PREDICTION_KEYS: tuple[str, ...] = (
    "id",
    "label",
    "predicted",
    "score",
    "categories",
    "latency_ms",
    "outcome",
)


@dataclass(frozen=True)
class Prediction:
    """One row's outcome; ``to_dict`` is the ``--out`` JSONL record."""

    id: str
    label: Label
    predicted: Label
    score: float | None
    categories: tuple[str, ...]
    latency_ms: float
    outcome: str
    truth_categories: tuple[str, ...] = ()

    @property
    def ranking_score(self) -> float:
        """The score used for AUPRC: the guard's P(unsafe), or 1.0/0.0 from the prediction when absent.

        Unparseable and error verdicts rank as 1.0 whatever score they carry (they are predicted unsafe).
        """
        if self.outcome in (Outcome.UNPARSEABLE.value, Outcome.ERROR.value):
            return 1.0
        if self.score is None or not math.isfinite(self.score):
            return 1.0 if self.predicted == "unsafe" else 0.0
        return float(self.score)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "label": self.label,
            "predicted": self.predicted,
            "score": self.score,
            "categories": list(self.categories),
            "latency_ms": round(self.latency_ms, 3),
            "outcome": self.outcome,
        }


def predict(row: EvalRow, verdict: Verdict) -> Prediction:
    """Score one verdict against its row: unsafe iff the verdict would block (fail closed)."""
    blocks = verdict.outcome not in (Outcome.SAFE, Outcome.BYPASS)  # = verdict.blocks when enforced
    return Prediction(
        id=row.id,
        label=row.label,
        predicted="unsafe" if blocks else "safe",
        score=verdict.score,
        categories=tuple(verdict.codes),
        latency_ms=float(verdict.latency_ms or 0.0),
        outcome=verdict.outcome.value,
        truth_categories=row.categories,
    )


ProgressCallback = Callable[[int, int], None]


def predict_rows(
    rows: Sequence[EvalRow],
    guard: Guard,
    policy: Policy,
    batch_size: int = 8,
    progress: ProgressCallback | None = None,
    window_turns: int | None = None,
) -> list[Prediction]:
    """Check every row (:func:`check_in_batches`); ``progress(done, total)`` after each batch."""
    verdicts = check_in_batches(guard, [row.request(policy, window_turns) for row in rows], batch_size, progress)
    return [predict(row, verdict) for row, verdict in zip(rows, verdicts, strict=True)]


def check_in_batches(
    guard: Guard, requests: Sequence[GuardRequest], batch_size: int = 8, progress: ProgressCallback | None = None
) -> list[Verdict]:
    """Every request's verdict, asked with ``guard.check_batch`` in batches; ``progress(done, total)`` after each.

    A batch whose ``check_batch`` raises becomes error verdicts (they block: fail closed) rather than
    aborting a long run.
    """
    if batch_size < 1:
        raise ValueError("batch size must be at least 1")
    verdicts: list[Verdict] = []
    guard_name = getattr(guard, "name", type(guard).__name__)
    for start in range(0, len(requests), batch_size):
        batch = requests[start : start + batch_size]
        try:
            answers = guard.check_batch(batch)
            if len(answers) != len(batch):
                raise RuntimeError(f"{len(answers)} verdicts for {len(batch)} requests")
        except Exception as error:  # fail closed, keep going
            reason = f"{type(error).__name__}: {error}"
            answers = [undecided_verdict(request.role, guard_name, reason) for request in batch]
        verdicts.extend(answers)
        if progress is not None:
            progress(len(verdicts), len(requests))
    return verdicts


@dataclass
class EvalResult:
    """One evaluated file: its predictions and metrics."""

    metrics: EvalMetrics
    predictions: list[Prediction]
    loaded: LoadedRows

    def pr_curve(self) -> tuple[np.ndarray, np.ndarray]:
        """(recall, precision) points of this file's PR curve, from recall 0 up to the first full recall.

        Point ``n``'s precision holds over recall (R_{n-1}, R_n]: draw it with ``step(where="pre")``.
        """
        labels = [int(p.label == "unsafe") for p in self.predictions]
        precision, recall, _ = precision_recall_curve(labels, [p.ranking_score for p in self.predictions])
        if not precision.size:
            return np.zeros(1), np.ones(1)
        stop = int(np.argmax(recall >= recall[-1])) + 1  # later thresholds add false positives only
        precision, recall = precision[:stop], recall[:stop]
        return np.r_[0.0, recall], np.r_[precision[0], precision]


def dataset_name(path: str | Path) -> str:
    name = Path(path).name
    for suffix in (".jsonl", ".json"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def evaluate_loaded(
    loaded: LoadedRows,
    guard: Guard,
    policy: Policy,
    batch_size: int = 8,
    progress: ProgressCallback | None = None,
    window_turns: int | None = None,
) -> EvalResult:
    """Run and score rows already read by ``load_rows``."""
    predictions = predict_rows(
        loaded.rows, guard, policy, batch_size=batch_size, progress=progress, window_turns=window_turns
    )
    metrics = compute_metrics(predictions, dataset_name(loaded.path), loaded.skipped, loaded.path)
    return EvalResult(metrics, predictions, loaded)


def evaluate_file(
    path: str | Path,
    guard: Guard,
    policy: Policy,
    batch_size: int = 8,
    limit: int | None = None,
    progress: ProgressCallback | None = None,
    window_turns: int | None = None,
) -> EvalResult:
    """Load, run and score one JSONL file."""
    loaded = load_rows(path, limit=limit)
    return evaluate_loaded(loaded, guard, policy, batch_size, progress, window_turns)


def write_predictions(predictions: Iterable[Prediction], path: str | Path) -> Path:
    """Write one JSON object per row (keys: PREDICTION_KEYS)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for prediction in predictions:
            handle.write(json.dumps(prediction.to_dict(), ensure_ascii=False) + "\n")
    return path
