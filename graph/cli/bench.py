"""``guardgraph bench``: run the measurements of ``guardgraph.graph.bench`` and print what they report."""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer

from guardgraph.graph.bench import SECTIONS, run_bench
from guardgraph.graph.models.offline_chat import transformers_progress_bars_off


def bench_command(
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")] = False,
    only: Annotated[
        list[str] | None, typer.Option("--only", help=f"Run only these sections: {', '.join(SECTIONS)}.")
    ] = None,
    repeats: Annotated[int, typer.Option(help="Timed rounds per comparison (medians are reported).")] = 3,
    llm_batch: Annotated[int, typer.Option(help="Checks in the stand-in Llama Guard batch comparison.")] = 16,
    threads: Annotated[
        int | None, typer.Option(help="torch intra-op threads (default: $GUARDGRAPH_TORCH_THREADS or half the CPUs).")
    ] = None,
) -> None:
    """Measure guard overheads side by side on this machine (ratios; see BENCHMARKS.md)."""
    sections = tuple(only) if only else SECTIONS
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        raise typer.BadParameter(f"unknown sections {unknown}: use {', '.join(SECTIONS)}")
    log = (lambda m: print(m, file=sys.stderr, flush=True)) if json_output else (lambda m: print(m, flush=True))
    with transformers_progress_bars_off():  # the bench's own progress lines say what loads
        results = run_bench(sections, repeats=repeats, llm_batch=llm_batch, log=log, threads=threads)
    if json_output:
        sys.stdout.write(json.dumps(results, indent=2, default=str) + "\n")
        return
    for key, value in results.items():
        if key in ("machine", "errors"):
            continue
        shown = f"{value:.3f}" if isinstance(value, float) else str(value)
        print(f"{key:40s} {shown}")
    for name, error in results.get("errors", {}).items():
        print(f"{name:40s} not measured: {error}")
    print(json.dumps(results["machine"]))
