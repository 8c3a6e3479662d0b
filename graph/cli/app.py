"""The ``guardgraph`` command line: a thin shell over the same builder notebooks and the server use."""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
import uuid
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from types import FrameType
from typing import Annotated, Any

import typer
from rich.console import Console

from guardgraph.graph.builder import build_graph
from guardgraph.graph.cli.bench import bench_command
from guardgraph.graph.cli.eval import eval_command
from guardgraph.graph.cli.options import (
    GUARD_OPTIONS,
    TurnError,
    err_console,
    error_line,
    fail,
    last_message_request,
    loading_models,
    read_conversation,
    unicode_problem,
    with_config,
    write_json,
)
from guardgraph.graph.cli.policy import policy_app
from guardgraph.graph.cli.prepare import prepare_command
from guardgraph.graph.config import GuardGraphConfig
from guardgraph.graph.models.checkpointers import DatabaseError, Persistence, open_persistence
from guardgraph.graph.models.deps import build_deps, guard_settings
from guardgraph.graph.models.guards import OLLAMA_URL, backend_name, build_guard
from guardgraph.graph.models.turn_locks import ThreadBusyError
from guardgraph.graph.turns import run_turn
from guardgraph.nodes.chat import STOPPED
from guardgraph.nodes.checks.request import ConversationError
from guardgraph.nodes.checks.run import run_guard
from guardgraph.nodes.checks.verdict import BAD_INPUT, Outcome, Verdict
from guardgraph.nodes.guards.llama_guard.formats import get_format
from guardgraph.nodes.guards.llama_guard.render import render_prompt
from guardgraph.nodes.streaming.generation import cancel_generations

app = typer.Typer(
    help="A Llama 3 chatbot guarded in both directions by Llama Guard.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console()

ConversationOpt = Annotated[
    Path | None, typer.Option("--conversation", help='JSON file: [{"role": "user"|"assistant", "content": ...}]')
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]


def _messages(text: str | None, conversation: Path | None) -> list[dict[str, Any]]:
    if (text is None) == (conversation is None):
        fail("give either TEXT or --conversation FILE (exactly one)")
    if conversation is not None:
        return read_conversation(conversation)
    return [{"role": "user", "content": text}]


def verdict_line(verdict: dict[str, Any]) -> str:
    """A compact one-line summary of a verdict for --verbose."""
    codes = ",".join(c["code"] for c in verdict.get("categories", []))
    score = "" if verdict.get("score") is None else f" p={verdict['score']:.2f}"
    extra = f" ({verdict['reason']})" if verdict.get("reason") else ""
    shadow = "" if verdict.get("enforced", True) else " [shadow]"
    by = f" by {verdict['flagged_by']}" if verdict.get("flagged_by") else ""
    head = f"{verdict['role']:<5} {verdict['outcome']}{' ' + codes if codes else ''}{by}"
    return f"{head}{score} {verdict['latency_ms']:.0f}ms{shadow}{extra}"


@app.command()
@with_config(GUARD_OPTIONS)
def render(
    config: GuardGraphConfig,
    conversation: ConversationOpt = None,
    names_only: Annotated[bool, typer.Option(help="Leave out category descriptions.")] = False,
) -> None:
    """Print exactly the prompt the guard model receives (role from the last message)."""
    if conversation is None:
        fail("render needs --conversation FILE")
    policy = config.load_policy()
    request = last_message_request(read_conversation(conversation), config, policy)
    fmt = get_format(config.resolved_guard_format(policy))
    sys.stdout.write(render_prompt(request, fmt, descriptions=not names_only))


CHECK_EXIT_CODES = "Exit status: 0 safe, 1 not safe (unsafe, unparseable, error), 2 bad input or options."
NOT_SAFE = 1
STOPPED_EXIT = 130  # a reply stopped with Ctrl-C, as a shell reports a command SIGINT ended


@app.command(help=f"Guard only: is the last message of TEXT or the conversation safe? {CHECK_EXIT_CODES}")
@with_config()
def check(
    config: GuardGraphConfig,
    text: Annotated[str | None, typer.Argument(help="A user message to check.")] = None,
    conversation: ConversationOpt = None,
    json_output: JsonOpt = False,
) -> None:
    """Guard only; the exit status is 0 when the text may pass, 1 when it is blocked, 2 for bad input.

    ``--shadow`` and ``--fail-open`` decide what may pass, as in a chat: the status follows ``safe`` in
    the JSON output.
    """
    policy = config.load_policy()
    request = last_message_request(_messages(text, conversation), config, policy)
    with loading_models(quiet=json_output):
        guard = build_guard(config, policy)
    verdict = run_guard(guard, request, guard_settings(config))
    if json_output:
        write_json(check_json(verdict))
    else:
        style = "green" if verdict.safe else "bold red"
        console.print(f"[{style}]{verdict.outcome.value}[/] " + verdict_line(verdict.to_dict()), highlight=False)
    report_guard_trouble(config, [verdict.to_dict()], set())
    if verdict.blocks:
        raise typer.Exit(NOT_SAFE)


def check_json(verdict: Verdict) -> dict[str, Any]:
    return {
        "safe": not verdict.blocks,
        "outcome": verdict.outcome.value,
        "categories": verdict.codes,
        "category_names": [hit.name for hit in verdict.categories],
        "flagged_by": verdict.flagged_by,
        "score": verdict.score,
        "reason": verdict.reason,
    }


def guard_location(config: GuardGraphConfig) -> str:
    """Where the guard runs, as an operator would look for it."""
    backend = backend_name(config)
    if backend in ("openai", "ollama"):
        return f"the guard at {config.guard_endpoint or OLLAMA_URL} ({backend}, model {config.guard_model})"
    if backend == "transformers":
        return f"the guard {config.guard_model} (transformers)"
    return f"the {backend} guard"


def report_guard_trouble(config: GuardGraphConfig, verdicts: list[dict[str, Any]], shown: set[str]) -> None:
    """One stderr line per guard failure not in ``shown`` yet: where the guard is and what went wrong.

    The user is told only the policy's refusal; this line is for the operator. A check that could not
    decide (error, unparseable answer, or let through by ``--fail-open``) counts; bad input does not.
    """
    undecided = (Outcome.ERROR.value, Outcome.UNPARSEABLE.value, Outcome.BYPASS.value)
    for verdict in verdicts:
        if verdict["outcome"] not in undecided or verdict.get("metadata", {}).get(BAD_INPUT):
            continue
        line = f"{guard_location(config)} could not decide: {verdict.get('reason') or verdict['outcome']}"
        if line not in shown:
            shown.add(line)
            err_console.print(f"[bold red]guard error:[/] {line}", highlight=False, soft_wrap=True)


@contextlib.contextmanager
def interrupt_stops_reply() -> Iterator[None]:
    """While a turn runs, Ctrl-C stops the reply: the generation is cancelled and the turn ends at once,
    without a reply and with nothing saved. A second Ctrl-C interrupts as usual."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: FrameType | None) -> None:
        signal.signal(signal.SIGINT, previous)
        cancel_generations()

    previous = signal.signal(signal.SIGINT, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _turn(graph: Any, text: str, thread: str, on_text: Any = None) -> dict[str, Any]:
    """One turn as the CLI runs it: Ctrl-C stops it; a turn that ended without a reply raises TurnError."""
    with interrupt_stops_reply():
        state = run_turn(graph, text, thread, on_text=on_text)
    if state.get("error"):  # the thread is as before the turn
        raise TurnError(state["error"])
    return state


@app.command()
@with_config()
def ask(
    config: GuardGraphConfig,
    thread: str,
    text: Annotated[str, typer.Argument(help="The user message.")],
    json_output: JsonOpt = False,
) -> None:
    """One guarded turn: prints the reply, or the refusal."""
    with open_persistence(config.db) as store:  # an unusable database fails here, before any model loads
        with loading_models(quiet=json_output):
            graph = build_graph(build_deps(config), store.checkpointer)
        try:
            with store.turn(thread):  # turns on one thread, from any process, run one after another
                state = _turn(graph, text, thread)
        except TurnError as error:
            if str(error) == STOPPED:
                fail(str(error), code=STOPPED_EXIT)
            raise
    reply = str(state["messages"][-1].content)
    if json_output:
        write_json({"reply": reply, "refused": bool(state.get("refused")), "verdicts": state.get("verdicts", [])})
    else:
        sys.stdout.write(reply + "\n")
    report_guard_trouble(config, state.get("verdicts", []), set())


@app.command()
@with_config()
def chat(
    config: GuardGraphConfig,
    thread: str,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show each guard verdict.")] = False,
) -> None:
    """Interactive guarded chat (Ctrl-C stops a reply; Ctrl-D or /exit to leave)."""
    if thread == "default" and config.db is None:
        thread = uuid.uuid4().hex
    with open_persistence(config.db) as store:
        with loading_models():
            graph = build_graph(build_deps(config), store.checkpointer)
        _chat_loop(graph, store, thread, config, verbose)


def _chat_loop(graph: Any, store: Persistence, thread: str, config: GuardGraphConfig, verbose: bool) -> None:
    console.print(f"[dim]guardgraph chat · policy {config.policy} · thread {thread} · /exit to leave[/]")
    reported: set[str] = set()  # guard failures are told to the operator once, not every turn
    while True:
        try:
            text = console.input("[bold cyan]you>[/] ")
        except (EOFError, KeyboardInterrupt):
            console.print()
            return
        except UnicodeDecodeError:
            console.print("[red]error:[/] your message is not valid UTF-8 text", highlight=False)
            continue
        if text.strip() in ("/exit", "/quit"):
            return
        if not text.strip():
            continue
        problem = unicode_problem(text)
        if problem:
            console.print(f"[red]error:[/] your message is {problem}", highlight=False)
            continue
        console.print("[bold]bot>[/] ", end="")
        shown: list[str] = []
        try:
            with store.turn(thread):
                state = _turn(graph, text, thread, partial(_show_chunk, shown))
        except (ConversationError, TurnError, DatabaseError, ThreadBusyError) as error:
            console.print(f"{chr(10) if shown else ''}[red]error:[/] {error_line(error)}", highlight=False)
            continue
        if state.get("refused"):
            console.print(f"{chr(10) if shown else ''}[yellow]{state['messages'][-1].content}[/]", highlight=False)
        else:
            console.print()
        if verbose:
            for verdict in state.get("verdicts", []):
                console.print(f"[dim]  guard {verdict_line(verdict)}[/]", highlight=False)
        report_guard_trouble(config, state.get("verdicts", []), reported)


app.command("eval")(eval_command)
app.command("bench")(bench_command)
app.command("prepare")(prepare_command)
app.add_typer(policy_app, name="policy")


def _show_chunk(shown: list[str], chunk: str) -> None:
    """Print guarded reply text as it is released."""
    shown.append(chunk)
    console.out(chunk, end="", highlight=False)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
