"""The metrics of a guard on labeled rows, unsafe being the positive class: the one implementation.

Confusion counts give precision, recall, F1, false-positive rate and accuracy (``rates`` and the functions
behind it); scores give the precision-recall curve and AUPRC (average precision, ties handled like
scikit-learn's ``average_precision_score``); ``compute_metrics`` adds per-category recall and p50/p95
latency for a whole data set. Undefined values (precision with no predicted positives, FPR on a set with no
safe rows, ...) are ``None``, never NaN or 0.0.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple, Protocol

import numpy as np

# --------------------------------------------------------------------------------------------- counts


class Counts(NamedTuple):
    """Confusion counts (unsafe = positive)."""

    tp: int
    fp: int
    tn: int
    fn: int


def confusion_counts(truth: Sequence[bool] | np.ndarray, predicted: Sequence[bool] | np.ndarray) -> Counts:
    """Count true/false positives/negatives; ``truth`` and ``predicted`` are True where unsafe."""
    actual = np.asarray(truth, dtype=bool)
    guess = np.asarray(predicted, dtype=bool)
    if actual.shape != guess.shape:
        raise ValueError("truth and predicted must have the same length")
    return Counts(
        tp=int(np.sum(actual & guess)),
        fp=int(np.sum(~actual & guess)),
        tn=int(np.sum(~actual & ~guess)),
        fn=int(np.sum(actual & ~guess)),
    )


def ratio(numerator: float, denominator: float) -> float | None:
    """``numerator / denominator``, or None when the denominator is 0 (the rate is undefined)."""
    return float(numerator) / float(denominator) if denominator else None


def precision_score(tp: int, fp: int) -> float | None:
    """tp / (tp + fp); None when nothing is predicted unsafe."""
    return ratio(tp, tp + fp)


def recall_score(tp: int, fn: int) -> float | None:
    """tp / (tp + fn); None when no row is unsafe."""
    return ratio(tp, tp + fn)


def f1_score(tp: int, fp: int, fn: int) -> float | None:
    """2tp / (2tp + fp + fn), the harmonic mean of precision and recall; None when tp = fp = fn = 0."""
    return ratio(2 * tp, 2 * tp + fp + fn)


def false_positive_rate(fp: int, tn: int) -> float | None:
    """fp / (fp + tn); None when no row is safe."""
    return ratio(fp, fp + tn)


def accuracy_score(tp: int, fp: int, tn: int, fn: int) -> float | None:
    """(tp + tn) / n; None on no rows."""
    return ratio(tp + tn, tp + fp + tn + fn)


class Rates(NamedTuple):
    """The rates of one set of confusion counts; None where undefined."""

    precision: float | None
    recall: float | None
    f1: float | None
    fpr: float | None
    accuracy: float | None


def rates(tp: int, fp: int, tn: int, fn: int) -> Rates:
    """Precision, recall, F1, FPR and accuracy from confusion counts."""
    return Rates(
        precision=precision_score(tp, fp),
        recall=recall_score(tp, fn),
        f1=f1_score(tp, fp, fn),
        fpr=false_positive_rate(fp, tn),
        accuracy=accuracy_score(tp, fp, tn, fn),
    )


# --------------------------------------------------------------------------------------------- scores


def precision_recall_curve(
    labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision and recall at every distinct score threshold, highest threshold first.

    Returns ``(precision, recall, thresholds)``; point ``n`` counts every row with score >= thresholds[n]
    as unsafe, so tied scores enter together (as in scikit-learn).
    """
    y = np.asarray(labels, dtype=np.int64)
    s = np.asarray(scores, dtype=np.float64)
    if y.shape != s.shape:
        raise ValueError("labels and scores must have the same length")
    if y.size == 0:
        empty = np.zeros(0)
        return empty, empty, empty
    order = np.argsort(-s, kind="mergesort")
    y, s = y[order], s[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(s)), y.size - 1]
    tps = np.cumsum(y)[last_of_tie].astype(np.float64)
    fps = (last_of_tie + 1) - tps
    positives = tps[-1]
    precision = tps / (tps + fps)
    recall = tps / positives if positives else np.zeros_like(tps)
    return precision, recall, s[last_of_tie]


def average_precision(labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray) -> float | None:
    """AP = sum_n (R_n - R_{n-1}) * P_n over distinct thresholds (R_0 = 0); None without unsafe rows."""
    y = np.asarray(labels, dtype=np.int64)
    if y.size == 0 or not y.any():
        return None
    precision, recall, _ = precision_recall_curve(y, scores)
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (linear interpolation, as ``numpy.percentile``); None on no values."""
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if len(values) else None


# --------------------------------------------------------------------------------------------- data sets


class ScoredRow(Protocol):
    """What ``compute_metrics`` reads of one row's prediction (``run.Prediction`` is one)."""

    @property
    def label(self) -> str: ...
    @property
    def predicted(self) -> str: ...
    @property
    def score(self) -> float | None: ...
    @property
    def outcome(self) -> str: ...
    @property
    def latency_ms(self) -> float: ...
    @property
    def truth_categories(self) -> tuple[str, ...]: ...
    @property
    def ranking_score(self) -> float: ...


@dataclass
class EvalMetrics:
    """Everything ``guardgraph eval`` reports for one data set (unsafe = positive class)."""

    dataset: str
    n: int
    n_unsafe: int
    n_safe: int
    tp: int
    fp: int
    tn: int
    fn: int
    precision: float | None
    recall: float | None
    f1: float | None
    fpr: float | None
    accuracy: float | None
    auprc: float | None
    auprc_scores: str  # "model": every row had a guard score; "predicted": none had; "mixed"
    n_scored: int
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    outcomes: dict[str, int]
    per_category: dict[str, dict[str, Any]]
    skipped: dict[str, int] = field(default_factory=dict)
    path: str = ""

    @property
    def auprc_note(self) -> str:
        if self.auprc_scores == "model":
            return ""
        if self.auprc_scores == "predicted":
            return "no guard scores: AUPRC from the 1.0/0.0 predictions"
        return f"{self.n - self.n_scored} of {self.n} rows had no guard score: 1.0/0.0 from the prediction"

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["auprc_note"] = self.auprc_note
        return data


def compute_metrics(
    predictions: Sequence[ScoredRow],
    dataset: str = "",
    skipped: Mapping[str, int] | None = None,
    path: str = "",
) -> EvalMetrics:
    """Confusion counts, F1/precision/recall/FPR/accuracy, AUPRC, per-category recall, latency percentiles."""
    truth = np.array([p.label == "unsafe" for p in predictions], dtype=bool)
    guess = np.array([p.predicted == "unsafe" for p in predictions], dtype=bool)
    counts = confusion_counts(truth, guess)
    scores = rates(*counts)
    n = len(predictions)
    n_scored = sum(
        1
        for p in predictions
        if p.score is not None and math.isfinite(p.score) and p.outcome not in ("unparseable", "error")
    )
    per_category: dict[str, dict[str, Any]] = {}
    for p in predictions:
        if p.label != "unsafe":
            continue
        for code in dict.fromkeys(p.truth_categories):
            entry = per_category.setdefault(code, {"n": 0, "detected": 0, "recall": None})
            entry["n"] += 1
            entry["detected"] += p.predicted == "unsafe"
    for entry in per_category.values():
        entry["recall"] = recall_score(entry["detected"], entry["n"] - entry["detected"])
    per_category = dict(sorted(per_category.items(), key=lambda item: _category_sort_key(item[0])))
    latencies = [p.latency_ms for p in predictions]
    return EvalMetrics(
        dataset=dataset,
        n=n,
        n_unsafe=int(truth.sum()),
        n_safe=int((~truth).sum()),
        tp=counts.tp,
        fp=counts.fp,
        tn=counts.tn,
        fn=counts.fn,
        precision=scores.precision,
        recall=scores.recall,
        f1=scores.f1,
        fpr=scores.fpr,
        accuracy=scores.accuracy,
        auprc=average_precision(truth.astype(np.int64), [p.ranking_score for p in predictions]),
        auprc_scores="model" if n_scored == n else "predicted" if n_scored == 0 else "mixed",
        n_scored=n_scored,
        latency_p50_ms=percentile(latencies, 50),
        latency_p95_ms=percentile(latencies, 95),
        outcomes=dict(Counter(p.outcome for p in predictions).most_common()),
        per_category=per_category,
        skipped=dict(skipped or {}),
        path=path,
    )


def _category_sort_key(code: str) -> tuple[int, str, int, str]:
    """S1, S2, ..., S10 in number order; free-text categories after, alphabetically."""
    head, digits = code[:1], code[1:]
    if head.isalpha() and head.isupper() and digits.isdigit():
        return (0, head, int(digits), "")
    return (1, "", 0, code)
