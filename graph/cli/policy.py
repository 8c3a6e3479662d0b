"""``guardgraph policy test``: a policy's own examples and counter-examples through the configured guard.

Exit codes: 0 the policy passes (every example caught, no counter-example flagged, every message decided),
1 it does not, 2 bad input (the policy file, an option).
"""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from guardgraph.graph.cli.options import GUARD_OPTIONS, loading_models, with_config
from guardgraph.graph.config import GuardGraphConfig
from guardgraph.graph.models.guards import build_guard
from guardgraph.nodes.evaluation.policy_test import PolicyReport, evaluate_policy

policy_app = typer.Typer(help="Policies: test one before shipping it.", no_args_is_help=True)
console = Console()
# The policy is this command's argument, so every shared guard option but --policy.
TEST_OPTIONS = {name: option for name, option in GUARD_OPTIONS.items() if name != "policy"}


def report_table(report: PolicyReport) -> Table:
    """One row per category: caught examples (by which part) and flagged counter-examples."""
    table = Table(title=f"policy {report.policy} · guard {report.guard} · leave-one-out", title_justify="left")
    table.add_column("code", style="bold")
    table.add_column("category")
    table.add_column("examples caught", justify="right")
    table.add_column("by guard", justify="right")
    table.add_column("by examples", justify="right")
    table.add_column("by both", justify="right")
    table.add_column("counter-examples flagged", justify="right")
    for c in report.categories:
        table.add_row(
            c.code,
            c.name,
            f"{c.caught}/{c.examples}",
            str(c.caught_by_guard_only),
            str(c.caught_by_examples_only),
            str(c.caught_by_both),
            f"{c.flagged}/{c.counter_examples}",
        )
    return table


def print_report(report: PolicyReport) -> None:
    out = console if console.is_terminal else Console(width=max(console.width, 160))
    out.print(report_table(report))
    if report.untested:
        out.print(f"not tested (no examples or counter-examples): {', '.join(report.untested)}", highlight=False)
    ignored = [c for c in report.categories if c.ignored_by_guard]
    if ignored:
        names = ", ".join(f"{c.code} ({c.guard_caught}/{c.examples} by the guard alone)" for c in ignored)
        out.print(f"[bold]the guard alone ignores:[/] {names}", highlight=False)
    for item in report.items:
        if not item.passed:
            what = "missed example" if item.kind == "example" else "flagged counter-example"
            by = f" by {item.flagged_by}" if item.flagged_by else ""
            codes = ",".join(item.codes) or item.outcome
            out.print(f'[red]{what}[/] {item.code} "{item.text}" -> {codes}{by}', highlight=False)
    for warning in report.warnings:
        out.print(f"[yellow]warning:[/] {warning}", highlight=False)
    totals = report.to_dict()
    verdict = "[green]passed[/]" if report.passed else "[bold red]failed[/]"
    out.print(
        f"{verdict}: {totals['caught']}/{totals['examples']} examples caught, "
        f"{totals['flagged']}/{totals['counter_examples']} counter-examples flagged",
        highlight=False,
    )


@policy_app.command("test")
@with_config(TEST_OPTIONS)
def policy_test_command(
    config: GuardGraphConfig,
    policy: Annotated[str, typer.Argument(metavar="POLICY", help="Bundled policy name or path to a policy YAML file.")],
    json_output: Annotated[bool, typer.Option("--json", help="Print the table as JSON instead.")] = False,
    batch_size: Annotated[int, typer.Option(min=1, help="Messages per check_batch call.")] = 8,
) -> None:
    """Run POLICY's examples and counter-examples through the guard, each left out of the policy it is checked
    under; name the categories the guard alone ignores. Exit 0 when the policy passes, 1 when it does not."""
    config = config.model_copy(update={"policy": policy})
    loaded = config.load_policy()
    with loading_models(quiet=json_output):
        guard = build_guard(config, loaded)
    report = evaluate_policy(guard, loaded, batch_size=batch_size)
    if json_output:
        data: dict[str, Any] = report.to_dict()
        sys.stdout.write(json.dumps(data, ensure_ascii=False) + "\n")
    else:
        print_report(report)
    if not report.passed:
        raise typer.Exit(1)
