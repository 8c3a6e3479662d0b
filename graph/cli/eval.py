"""``guardgraph eval``: measure a guard on labeled JSONL data sets (metrics table, predictions, PR curve)."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from guardgraph.graph.cli.options import GUARD_OPTIONS, loading_models, with_config
from guardgraph.graph.config import GuardGraphConfig
from guardgraph.graph.models.guards import build_guard
from guardgraph.nodes.evaluation.datasets import EvalDataError, LoadedRows, load_rows
from guardgraph.nodes.evaluation.metrics import EvalMetrics
from guardgraph.nodes.evaluation.plot import plot_pr_curves
from guardgraph.nodes.evaluation.run import EvalResult, dataset_name, evaluate_loaded, write_predictions
from guardgraph.nodes.guards.base import Guard
from guardgraph.policies.model import Policy

console = Console()
err_console = Console(stderr=True)


def _fmt(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _ms(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f}"


def metrics_table(metrics: Sequence[EvalMetrics], title: str | None = None) -> Table:
    """One row per data set: counts, F1, precision, recall, FPR, AUPRC, accuracy, latency."""
    table = Table(title=title, title_justify="left")
    table.add_column("data set", style="bold")
    for name in ("rows", "unsafe", "F1", "precision", "recall", "FPR", "AUPRC", "accuracy"):
        table.add_column(name, justify="right")
    table.add_column("tp/fp/tn/fn", justify="right")
    table.add_column("p50 ms", justify="right")
    table.add_column("p95 ms", justify="right")
    for m in metrics:
        auprc = _fmt(m.auprc) + ("" if m.auprc_scores == "model" else "*")
        table.add_row(
            m.dataset,
            str(m.n),
            str(m.n_unsafe),
            _fmt(m.f1),
            _fmt(m.precision),
            _fmt(m.recall),
            _fmt(m.fpr),
            auprc,
            _fmt(m.accuracy),
            f"{m.tp}/{m.fp}/{m.tn}/{m.fn}",
            _ms(m.latency_p50_ms),
            _ms(m.latency_p95_ms),
        )
    return table


def category_table(metrics: EvalMetrics) -> Table:
    """Recall of the unsafe rows of each ground-truth category."""
    table = Table(title=f"{metrics.dataset}: recall per ground-truth category", title_justify="left")
    table.add_column("category")
    table.add_column("unsafe rows", justify="right")
    table.add_column("flagged", justify="right")
    table.add_column("recall", justify="right")
    for code, entry in metrics.per_category.items():
        table.add_row(code, str(entry["n"]), str(entry["detected"]), _fmt(entry["recall"]))
    return table


def _out() -> Console:
    """The stdout console; piped or captured output gets a wide page so the table does not wrap at 80."""
    return console if console.is_terminal else Console(width=max(console.width, 160))


def print_report(results: Sequence[EvalResult], guard_name: str, policy: Policy) -> None:
    metrics = [result.metrics for result in results]
    console = _out()
    console.print(metrics_table(metrics, title=f"guard {guard_name} · policy {policy.name}"))
    notes = []
    for m in metrics:
        if m.auprc_scores != "model":
            notes.append(f"* {m.dataset}: {m.auprc_note}")
        odd = {k: v for k, v in m.outcomes.items() if k not in ("safe", "unsafe")}
        if odd:
            counts = ", ".join(f"{v} {k}" for k, v in odd.items())
            notes.append(f"{m.dataset}: {counts} (counted as unsafe: fail closed)")
    for note in notes:
        console.print(f"[dim]{note}[/]", highlight=False)
    if len(metrics) == 1 and metrics[0].per_category:
        console.print(category_table(metrics[0]))


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err_console,
        transient=True,
    )


def run_eval(
    loaded: Sequence[LoadedRows],
    guard: Guard,
    policy: Policy,
    batch_size: int = 8,
    window_turns: int | None = None,
    show_progress: bool = True,
) -> list[EvalResult]:
    """Run ``guard`` over every loaded file, with a rich progress bar on stderr."""
    results: list[EvalResult] = []
    with _progress() as progress:
        for rows in loaded:
            name = dataset_name(rows.path)
            task = progress.add_task(name, total=len(rows.rows), visible=show_progress)

            def advance(done: int, total: int, task: Any = task) -> None:
                progress.update(task, completed=done)

            results.append(
                evaluate_loaded(rows, guard, policy, batch_size, progress=advance, window_turns=window_turns)
            )
            progress.update(task, visible=False)
    return results


def _prediction_paths(out: Path, loaded: Sequence[LoadedRows]) -> list[Path]:
    """One file: ``--out`` is the JSONL file. Several: ``--out`` is a folder of ``<data set>.jsonl`` files."""
    if len(loaded) == 1:
        return [out]
    names = [dataset_name(rows.path) for rows in loaded]
    if len(set(names)) != len(names):
        raise EvalDataError("two data files share a name: evaluate them separately to write predictions")
    if out.suffix == ".jsonl":
        raise EvalDataError(f"--out {out}: with several data files, --out names a folder, not a .jsonl file")
    return [out / f"{name}.jsonl" for name in names]


@with_config(GUARD_OPTIONS)
def eval_command(
    config: GuardGraphConfig,
    data: Annotated[
        list[Path],
        typer.Argument(metavar="DATA.jsonl...", help="Labeled JSONL data sets (prompt/response/conversation rows)."),
    ],
    out: Annotated[
        Path | None,
        typer.Option(help="Write predictions as JSONL (with several DATA files: a folder, one file per set)."),
    ] = None,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print only the metrics, as JSON (a list with several DATA files).")
    ] = False,
    plot: Annotated[Path | None, typer.Option(help="Save the precision-recall curve(s) as a PNG.")] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="Evaluate only the first N rows of each file.")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Requests per check_batch call.")] = 8,
) -> None:
    """Measure the guard on labeled data: F1, precision, recall, FPR, AUPRC, per-category recall, latency.

    Refusal sets (compliance/refusal labels) are rejected; unparseable or failed verdicts count as unsafe.
    """
    loaded_policy = config.load_policy()
    loaded = [load_rows(path, limit=limit) for path in data]  # all files checked before any model loads
    prediction_paths = _prediction_paths(out, loaded) if out is not None else []
    for rows in loaded:
        for message in rows.skipped_messages():
            err_console.print(f"[yellow]{dataset_name(rows.path)}:[/] {message}", highlight=False)
    with loading_models(quiet=json_output):
        guard = build_guard(config, loaded_policy)
    results = run_eval(loaded, guard, loaded_policy, batch_size=batch_size, window_turns=config.window_turns)

    for path, result in zip(prediction_paths, results, strict=False):  # no paths without --out
        write_predictions(result.predictions, path)
    if plot is not None:
        plot_pr_curves(results, plot)
    metrics = [result.metrics.to_dict() for result in results]
    if json_output:
        sys.stdout.write(json.dumps(metrics[0] if len(metrics) == 1 else metrics, ensure_ascii=False) + "\n")
        return
    print_report(results, getattr(guard, "name", type(guard).__name__), loaded_policy)
    for path in prediction_paths:
        console.print(f"[dim]predictions: {path}[/]", highlight=False, soft_wrap=True)
    if plot is not None:
        console.print(f"[dim]precision-recall curve: {plot}[/]", highlight=False, soft_wrap=True)
