"""Measure a guard on a labeled JSONL data set: rows in, predictions and metrics out.

Pure logic, no CLI: ``graph/cli_eval.py`` wraps it in ``guardgraph eval``.

Rows follow ``datasets/README.md``::

    {"id", "source", "task": "prompt" | "response" | "refusal", "prompt", "response",
     "label": "safe" | "unsafe", "orig_categories", "lg3_categories", ...}

* ``task: prompt`` rows become a User check on ``[user: prompt]``;
* ``task: response`` rows become an Agent check on ``[user: prompt, assistant: response]``;
* rows carrying ``conversation: [{"role", "content"}, ...]`` are checked as that conversation, the role
  taken from the last message (``user`` -> User check, ``assistant`` -> Agent check);
* ``task: refusal`` rows are skipped: refusal sets are labeled compliance/refusal, not safe/unsafe, so a
  guard's verdict cannot be scored against them. A file with nothing else is rejected.

A row is predicted ``unsafe`` iff its verdict blocks, ignoring a monitor-only policy's ``enforced=False``:
``unsafe``, ``unparseable`` and ``error`` all count as unsafe (fail closed).

Metrics are computed here with numpy (unsafe = positive class): F1, precision, recall, false-positive
rate, accuracy, counts, AUPRC (average precision, ties handled like scikit-learn's
``average_precision_score``), per-category recall and p50/p95 latency. Undefined values (precision with
no predicted positives, FPR on a set with no safe rows, ...) are ``None``, never NaN.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from guardgraph.nodes.checks.request import (
    ConversationError,
    GuardRequest,
    Turn,
    role_of_last,
    turns_from_messages,
    window,
)
from guardgraph.nodes.checks.verdict import Outcome, Role, Verdict
from guardgraph.nodes.guards.base import Guard, error_verdict
from guardgraph.policies.model import Policy

Label = Literal["safe", "unsafe"]
LABELS: tuple[str, ...] = ("safe", "unsafe")
PREDICTION_KEYS: tuple[str, ...] = (
    "id",
    "label",
    "predicted",
    "score",
    "categories",
    "latency_ms",
    "outcome",
)

SKIP_REFUSAL = "refusal-task rows (labeled compliance/refusal, not safe/unsafe: nothing to score a guard on)"


class EvalDataError(ValueError):
    """A data file that cannot be evaluated (malformed, or nothing with a safe/unsafe label)."""


@dataclass(frozen=True)
class EvalRow:
    """One labeled example, ready to become a GuardRequest under any policy."""

    id: str
    label: Label
    role: Role
    turns: tuple[Turn, ...]
    categories: tuple[str, ...] = ()
    source: str = ""

    def request(self, policy: Policy, window_turns: int | None = None) -> GuardRequest:
        """The guard request; ``window_turns`` keeps the last turns, as the guard node does in the graph."""
        return GuardRequest(role=self.role, turns=window(self.turns, window_turns), policy=policy)


@dataclass
class LoadedRows:
    """The evaluable rows of a file, and how many were skipped for which reason."""

    path: str
    rows: list[EvalRow]
    skipped: Counter[str] = field(default_factory=Counter)

    def skipped_messages(self) -> list[str]:
        return [f"skipped {count} {reason}" for reason, count in self.skipped.most_common()]


# --------------------------------------------------------------------------------------------- reading


def ground_truth_categories(row: Mapping[str, Any]) -> tuple[str, ...]:
    """The row's harm categories: ``lg3_categories``, else ``categories``, else ``orig_categories``."""
    for key in ("lg3_categories", "categories", "orig_categories"):
        value = row.get(key)
        if isinstance(value, str):
            value = [value]
        if value:
            return tuple(str(item) for item in value if str(item).strip())
    return ()


def _conversation_turns(messages: Any, where: str) -> tuple[Turn, ...]:
    if not isinstance(messages, list) or not messages:
        raise EvalDataError(f"{where}: 'conversation' must be a non-empty list of {{role, content}} messages")
    for index, message in enumerate(messages):
        if not isinstance(message, Mapping) or "role" not in message:
            raise EvalDataError(f"{where}: conversation[{index}] must be an object with 'role' and 'content'")
    try:
        turns = turns_from_messages(messages)
    except ConversationError as error:
        raise EvalDataError(f"{where}: {error}") from None
    if not turns:
        raise EvalDataError(f"{where}: the conversation has no user or assistant message")
    return turns


def row_to_eval_row(row: Mapping[str, Any], where: str) -> EvalRow | str:
    """Turn one JSON row into an EvalRow, or return the reason it is skipped."""
    task = str(row.get("task") or "").strip().lower()
    if task == "refusal":
        return SKIP_REFUSAL
    label = str(row.get("label") or "").strip().lower()
    if label not in LABELS:
        return f"rows labeled {row.get('label')!r} (only safe/unsafe can be scored)"
    row_id = str(row.get("id", where))
    categories = ground_truth_categories(row)
    source = str(row.get("source") or "")

    if row.get("conversation") is not None:
        turns = _conversation_turns(row["conversation"], where)
        return EvalRow(row_id, label, role_of_last(turns), turns, categories, source)  # type: ignore[arg-type]

    prompt = row.get("prompt")
    if not isinstance(prompt, str):
        raise EvalDataError(f"{where}: 'prompt' must be text (or give a 'conversation')")
    if task == "prompt":
        turns = (Turn("user", prompt),)
        return EvalRow(row_id, label, "User", turns, categories, source)  # type: ignore[arg-type]
    if task == "response":
        response = row.get("response")
        if not isinstance(response, str):
            return "response-task rows without a response"
        turns = (Turn("user", prompt), Turn("assistant", response))
        return EvalRow(row_id, label, "Agent", turns, categories, source)  # type: ignore[arg-type]
    raise EvalDataError(f"{where}: unknown task {row.get('task')!r} (expected prompt, response or refusal)")


def load_rows(path: str | Path, limit: int | None = None) -> LoadedRows:
    """Read a JSONL data set; skips refusal/unlabeled rows and raises EvalDataError when nothing is left."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").split("\n")  # not splitlines(): U+2028 may sit in text
    except (OSError, UnicodeDecodeError) as error:
        raise EvalDataError(f"{path}: cannot read: {error}") from None
    loaded = LoadedRows(str(path), [])
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            data = json.loads(line)
        except json.JSONDecodeError as error:
            raise EvalDataError(f"{where}: not valid JSON: {error.msg}") from None
        if not isinstance(data, dict):
            raise EvalDataError(f"{where}: each line must be a JSON object")
        result = row_to_eval_row(data, where)
        if isinstance(result, str):
            loaded.skipped[result] += 1
            continue
        loaded.rows.append(result)
        if limit is not None and len(loaded.rows) >= limit:
            break
    if not loaded.rows:
        if loaded.skipped.get(SKIP_REFUSAL) and len(loaded.skipped) == 1:
            raise EvalDataError(
                f"{path}: a refusal set ({loaded.skipped[SKIP_REFUSAL]} rows labeled compliance/refusal): "
                "guards answer safe/unsafe, so there is nothing to score; use a prompt or response set"
            )
        reasons = "; ".join(loaded.skipped_messages()) or "the file is empty"
        raise EvalDataError(f"{path}: no rows with a safe/unsafe label to evaluate ({reasons})")
    return loaded


# --------------------------------------------------------------------------------------------- running


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
    """Check every row with ``guard.check_batch`` in batches; ``progress(done, total)`` after each batch.

    A batch whose ``check_batch`` raises becomes error verdicts (predicted unsafe, fail closed) rather than
    aborting a long run; the metrics count them under ``outcomes``.
    """
    if batch_size < 1:
        raise ValueError("batch size must be at least 1")
    predictions: list[Prediction] = []
    total = len(rows)
    guard_name = getattr(guard, "name", type(guard).__name__)
    for start in range(0, total, batch_size):
        batch = rows[start : start + batch_size]
        requests = [row.request(policy, window_turns) for row in batch]
        try:
            verdicts = guard.check_batch(requests)
            if len(verdicts) != len(requests):
                raise RuntimeError(f"{len(verdicts)} verdicts for {len(requests)} requests")
        except Exception as error:  # fail closed, keep going
            reason = f"{type(error).__name__}: {error}"
            verdicts = [error_verdict(request, guard_name, reason) for request in requests]
        predictions.extend(predict(row, verdict) for row, verdict in zip(batch, verdicts, strict=True))
        if progress is not None:
            progress(len(predictions), total)
    return predictions


# --------------------------------------------------------------------------------------------- metrics


def _ratio(numerator: float, denominator: float) -> float | None:
    return float(numerator) / float(denominator) if denominator else None


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


def _percentile(values: Sequence[float], q: float) -> float | None:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if len(values) else None


def compute_metrics(
    predictions: Sequence[Prediction],
    dataset: str = "",
    skipped: Mapping[str, int] | None = None,
    path: str = "",
) -> EvalMetrics:
    """Confusion counts, F1/precision/recall/FPR/accuracy, AUPRC, per-category recall, latency percentiles."""
    truth = np.array([p.label == "unsafe" for p in predictions], dtype=bool)
    guess = np.array([p.predicted == "unsafe" for p in predictions], dtype=bool)
    tp = int(np.sum(truth & guess))
    fp = int(np.sum(~truth & guess))
    tn = int(np.sum(~truth & ~guess))
    fn = int(np.sum(truth & ~guess))
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
        entry["recall"] = _ratio(entry["detected"], entry["n"])
    per_category = dict(sorted(per_category.items(), key=lambda item: _category_sort_key(item[0])))
    latencies = [p.latency_ms for p in predictions]
    return EvalMetrics(
        dataset=dataset,
        n=n,
        n_unsafe=int(truth.sum()),
        n_safe=int((~truth).sum()),
        tp=tp,
        fp=fp,
        tn=tn,
        fn=fn,
        precision=_ratio(tp, tp + fp),
        recall=_ratio(tp, tp + fn),
        f1=_ratio(2 * tp, 2 * tp + fp + fn),
        fpr=_ratio(fp, fp + tn),
        accuracy=_ratio(tp + tn, n),
        auprc=average_precision(truth.astype(np.int64), [p.ranking_score for p in predictions]),
        auprc_scores="model" if n_scored == n else "predicted" if n_scored == 0 else "mixed",
        n_scored=n_scored,
        latency_p50_ms=_percentile(latencies, 50),
        latency_p95_ms=_percentile(latencies, 95),
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


# --------------------------------------------------------------------------------------------- files


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


def plot_pr_curves(results: Sequence[EvalResult], path: str | Path, title: str | None = None) -> Path:
    """Draw every result's precision-recall curve on one figure and save it as a PNG (Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure, axes = plt.subplots(figsize=(6.4, 4.8))
    try:
        for result in results:
            metrics = result.metrics
            if metrics.n_unsafe == 0:
                continue  # no positives: no curve
            recall, precision = result.pr_curve()
            ap = f"{metrics.auprc:.3f}" if metrics.auprc is not None else "n/a"
            note = {
                "model": "",
                "mixed": ", some scores from 0/1 predictions",
                "predicted": ", from 0/1 predictions",
            }
            label = f"{metrics.dataset} (AP {ap}{note[metrics.auprc_scores]})"
            axes.step(recall, precision, where="pre", label=label)
            if metrics.recall is not None and metrics.precision is not None:
                axes.plot([metrics.recall], [metrics.precision], "o", color=axes.lines[-1].get_color())
        axes.set_xlabel("recall (unsafe)")
        axes.set_ylabel("precision (unsafe)")
        axes.set_xlim(0.0, 1.01)
        axes.set_ylim(0.0, 1.05)
        axes.grid(alpha=0.3)
        axes.set_title(title or "Precision-recall (dot: the guard's decision threshold)")
        if axes.lines:
            axes.legend(loc="lower left", fontsize="small")
        figure.tight_layout()
        figure.savefig(path, dpi=120)
    finally:
        plt.close(figure)
    return path
