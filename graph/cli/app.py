"""The ``guardgraph`` command line: a thin shell over the same builder notebooks and the server use."""

from __future__ import annotations

import sys
import uuid
from functools import partial
from pathlib import Path
from typing import Annotated, Any

import typer
from langchain_core.messages import HumanMessage
from rich.console import Console

from guardgraph.graph.builder import build_graph
from guardgraph.graph.cli.bench import bench_command
from guardgraph.graph.cli.eval import eval_command
from guardgraph.graph.cli.options import (
    GUARD_OPTIONS,
    TurnError,
    fail,
    last_message_request,
    loading_models,
    read_conversation,
    with_config,
    write_json,
)
from guardgraph.graph.cli.policy import policy_app
from guardgraph.graph.cli.prepare import prepare_command
from guardgraph.graph.config import GuardGraphConfig
from guardgraph.graph.models.checkpointers import build_checkpointer
from guardgraph.graph.models.deps import build_deps, guard_settings
from guardgraph.graph.models.guards import build_guard
from guardgraph.nodes.checks.request import ConversationError
from guardgraph.nodes.checks.run import run_guard
from guardgraph.nodes.checks.verdict import Verdict
from guardgraph.nodes.context import Context
from guardgraph.nodes.guards.llama_guard.formats import get_format
from guardgraph.nodes.guards.llama_guard.render import render_prompt

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


@app.command()
@with_config()
def check(
    config: GuardGraphConfig,
    text: Annotated[str | None, typer.Argument(help="A user message to check.")] = None,
    conversation: ConversationOpt = None,
    json_output: JsonOpt = False,
) -> None:
    """Guard only: is the last message of TEXT or the conversation safe?"""
    policy = config.load_policy()
    request = last_message_request(_messages(text, conversation), config, policy)
    with loading_models(quiet=json_output):
        guard = build_guard(config, policy)
    verdict = run_guard(guard, request, guard_settings(config))
    if json_output:
        write_json(check_json(verdict))
        return
    style = "green" if verdict.safe else "bold red"
    console.print(f"[{style}]{verdict.outcome.value}[/] " + verdict_line(verdict.to_dict()), highlight=False)


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


def _checked_state(state: dict[str, Any]) -> dict[str, Any]:
    if state.get("error"):  # the chat model failed: the turn ended without a reply, the history is intact
        raise TurnError(state["error"])
    return state


def _run_turn(graph: Any, text: str, thread: str) -> dict[str, Any]:
    """One turn without token streaming: the output guard checks the complete reply once."""
    if not text.strip():
        raise ConversationError("the message is empty")
    config = {"configurable": {"thread_id": thread}}
    return _checked_state(
        graph.invoke({"messages": [HumanMessage(text)]}, config, context=Context(stream_tokens=False))
    )


def _stream_turn(graph: Any, text: str, thread: str, on_text: Any) -> dict[str, Any]:
    """One turn whose reply arrives chunk by chunk, each chunk only after the output guard passed it."""
    if not text.strip():
        raise ConversationError("the message is empty")
    final: dict[str, Any] = {}
    config = {"configurable": {"thread_id": thread}}
    for mode, event in graph.stream({"messages": [HumanMessage(text)]}, config, stream_mode=["custom", "values"]):
        if mode == "custom" and isinstance(event, dict) and event.get("guardgraph") == "token":
            on_text(event["text"])
        elif mode == "values":
            final = event
    return _checked_state(final)


@app.command()
@with_config()
def ask(
    config: GuardGraphConfig,
    thread: str,
    text: Annotated[str, typer.Argument(help="The user message.")],
    json_output: JsonOpt = False,
) -> None:
    """One guarded turn: prints the reply, or the refusal."""
    with loading_models(quiet=json_output):
        graph = build_graph(build_deps(config), build_checkpointer(config.db))
    state = _run_turn(graph, text, thread)
    reply = str(state["messages"][-1].content)
    if json_output:
        write_json({"reply": reply, "refused": bool(state.get("refused")), "verdicts": state.get("verdicts", [])})
    else:
        sys.stdout.write(reply + "\n")


@app.command()
@with_config()
def chat(
    config: GuardGraphConfig,
    thread: str,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show each guard verdict.")] = False,
) -> None:
    """Interactive guarded chat (Ctrl-D or /exit to leave)."""
    if thread == "default" and config.db is None:
        thread = uuid.uuid4().hex
    with loading_models():
        graph = build_graph(build_deps(config), build_checkpointer(config.db))
    console.print(f"[dim]guardgraph chat · policy {config.policy} · thread {thread} · /exit to leave[/]")
    while True:
        try:
            text = console.input("[bold cyan]you>[/] ")
        except (EOFError, KeyboardInterrupt):
            console.print()
            return
        if text.strip() in ("/exit", "/quit"):
            return
        if not text.strip():
            continue
        console.print("[bold]bot>[/] ", end="")
        shown: list[str] = []
        try:
            state = _stream_turn(graph, text, thread, partial(_show_chunk, shown))
        except (ConversationError, TurnError) as error:
            console.print(f"{chr(10) if shown else ''}[red]error:[/] {error}", highlight=False)
            continue
        if state.get("refused"):
            console.print(f"{chr(10) if shown else ''}[yellow]{state['messages'][-1].content}[/]", highlight=False)
        else:
            console.print()
        if verbose:
            for verdict in state.get("verdicts", []):
                console.print(f"[dim]  guard {verdict_line(verdict)}[/]", highlight=False)


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
