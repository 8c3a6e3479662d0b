"""Precision-recall curves of evaluated data sets drawn on one figure and saved as a PNG (matplotlib)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from guardgraph.nodes.evaluation.run import EvalResult


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
