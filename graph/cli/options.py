"""Options the guardgraph commands share, declared once and gathered into a GuardGraphConfig; one-line errors.

:data:`GUARD_OPTIONS` select the policy and the guard (every command that checks text takes them);
:data:`CHAT_OPTIONS` add the chat model, the thread, persistence, audit and the guard modes.
``@with_config()`` gives a command both; ``@with_config(GUARD_OPTIONS)`` the guard options only.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from pydantic import ValidationError
from rich.console import Console

from guardgraph.graph.config import GuardGraphConfig
from guardgraph.graph.models.checkpointers import DatabaseError
from guardgraph.graph.models.guards import GUARD_BACKENDS, ModelSetupError
from guardgraph.graph.models.turn_locks import ThreadBusyError
from guardgraph.nodes import defaults
from guardgraph.nodes.checks.request import ConversationError, GuardRequest, guard_request, turns_from_messages
from guardgraph.nodes.evaluation.datasets import EvalDataError
from guardgraph.nodes.guards.llama_guard.formats import UnknownFormatError
from guardgraph.policies.loader import PolicyError
from guardgraph.policies.model import Policy

err_console = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])


class TurnError(RuntimeError):
    """A turn that ended without a reply (the chat model failed); the history is unchanged."""


USER_ERRORS = (
    TurnError,
    DatabaseError,
    ThreadBusyError,
    EvalDataError,
    PolicyError,
    ConversationError,
    UnknownFormatError,
    ModelSetupError,
    ValidationError,
    OSError,
    UnicodeError,
)

GUARD_OPTIONS: dict[str, Any] = {
    "policy": Annotated[str, typer.Option(help="Bundled policy name or path to a policy YAML file.")],
    "guard_backend": Annotated[
        str | None,
        typer.Option(help=f"{'|'.join(GUARD_BACKENDS)}; default: from --guard-endpoint / --guard-model, else offline."),
    ],
    "guard_format": Annotated[str | None, typer.Option(help="llama-guard-1|2|3|3-1b|4; default: the policy's format.")],
    "guard_model": Annotated[
        str | None, typer.Option(help="Llama Guard hub id or local path (or the model name at --guard-endpoint).")
    ],
    "guard_endpoint": Annotated[
        str | None, typer.Option(help="Base URL of the server serving the guard (vLLM, llama.cpp, TGI, Ollama).")
    ],
    "guard_timeout": Annotated[
        float | None, typer.Option(help="Seconds one guard check may take before it counts as an error.")
    ],
}
CHAT_OPTIONS: dict[str, Any] = {
    "chat_model": Annotated[str | None, typer.Option(help="Chat model hub id or local path.")],
    "chat_endpoint": Annotated[str | None, typer.Option(help="OpenAI-compatible base URL serving the chat model.")],
    "thread": Annotated[str, typer.Option(help="Conversation thread id (persists with --db).")],
    "db": Annotated[
        str | None,
        typer.Option(help="Keeps conversations across runs: a SQLite file, or postgresql://user@host:port/dbname."),
    ],
    "audit": Annotated[Path | None, typer.Option(help="Append one JSON line per guard decision to this file.")],
    "audit_content": Annotated[
        bool, typer.Option("--audit-content", help="Also write the checked message text to the audit log.")
    ],
    "shadow": Annotated[
        bool, typer.Option("--shadow", help="Guards decide and log but do not block (measure before enforcing).")
    ],
    "fail_open": Annotated[
        bool,
        typer.Option(
            "--fail-open", help="Let content through (logged as 'bypass') when a guard errors or is unparseable."
        ),
    ],
}
DEFAULTS: dict[str, Any] = {name: None for name in (*GUARD_OPTIONS, *CHAT_OPTIONS)} | {
    "policy": defaults.POLICY,
    "thread": "default",
    "audit_content": False,
    "shadow": False,
    "fail_open": False,
}
# Option name -> GuardGraphConfig field, where they differ.
CONFIG_FIELD = {"guard_timeout": "guard_timeout_s"}
DEBUG_ENV = "GUARDGRAPH_DEBUG"


def fail(message: str, code: int = 2) -> NoReturn:
    """Print one readable error line and exit; never a stack trace."""
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def error_line(error: BaseException) -> str:
    """One line for ``error``: a validation error's first problem, else the first line of its message."""
    if isinstance(error, ValidationError):
        problems = error.errors()
        if problems:
            location = ".".join(str(part) for part in problems[0]["loc"]) or "options"
            return f"{location.replace('_', '-')}: {problems[0]['msg']}"
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def with_config(*groups: dict[str, Any]) -> Callable[[F], F]:
    """Add the options of ``groups`` (default: all) to a command and hand it a ``config`` (and ``thread``)."""
    options: dict[str, Any] = {}
    for group in groups or (GUARD_OPTIONS, CHAT_OPTIONS):
        options.update(group)

    def decorate(func: F) -> F:
        signature = inspect.signature(func, eval_str=True)
        own = [p for p in signature.parameters.values() if p.name not in ("config", "thread")]
        shared = [
            inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=DEFAULTS[name], annotation=annotation)
            for name, annotation in options.items()
        ]
        wants_thread = "thread" in signature.parameters

        @functools.wraps(func)
        def command(**kwargs: Any) -> Any:
            values = {name: kwargs.pop(name) for name in options}
            thread = values.pop("thread", None)
            for option, field_name in CONFIG_FIELD.items():
                value = values.pop(option, None)
                if value is not None:
                    values[field_name] = value
            try:
                config = GuardGraphConfig(**values)
                if wants_thread:
                    kwargs["thread"] = thread
                return func(config=config, **kwargs)
            except (typer.Exit, typer.Abort, KeyboardInterrupt, SystemExit):
                raise
            except USER_ERRORS as error:
                fail(error_line(error))
            except Exception as error:  # never a stack trace on the command line, unless asked for
                if os.environ.get(DEBUG_ENV) == "1":
                    raise
                fail(f"{type(error).__name__}: {error_line(error)}", code=1)

        command.__signature__ = signature.replace(parameters=own + shared)  # type: ignore[attr-defined]
        command.__annotations__ = {}
        return command  # type: ignore[return-value]

    return decorate


@contextlib.contextmanager
def loading_models(quiet: bool = False) -> Iterator[None]:
    """While models load: one spinner line on stderr (none when ``quiet``), no transformers progress bars."""
    from guardgraph.graph.models.offline_chat import transformers_progress_bars_off

    with transformers_progress_bars_off():
        if quiet:
            yield
        else:
            with err_console.status("loading models..."):
                yield


def read_conversation(path: Path) -> list[dict[str, Any]]:
    """A JSON list of {"role": "user"|"assistant", "content": str}; errors name the file and the item."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ConversationError(f"{path}: not valid JSON: {error}") from None
    except UnicodeDecodeError:
        raise ConversationError(f"{path}: not UTF-8 text") from None
    except OSError as error:
        raise ConversationError(f"{path}: cannot read: {error.strerror or error}") from None
    if not isinstance(data, list) or not data:
        raise ConversationError(f"{path}: expected a non-empty JSON list of {{role, content}} messages")
    for index, item in enumerate(data):
        if not isinstance(item, dict) or item.get("role") not in ("user", "assistant"):
            raise ConversationError(f"{path}: message [{index}] needs role 'user' or 'assistant'")
        if not isinstance(item.get("content"), str | list):
            raise ConversationError(f"{path}: message [{index}] needs text content")
    try:
        turns_from_messages(data)
    except ConversationError as error:
        raise ConversationError(f"{path}: {error}") from None
    return data


def last_message_request(messages: list[dict[str, Any]], config: GuardGraphConfig, policy: Policy) -> GuardRequest:
    """The request that checks the conversation's last message: the user's (``User``) or the assistant's (``Agent``)."""
    if messages[-1]["role"] == "assistant":
        return guard_request("Agent", messages[:-1], policy, config.window_turns, reply=messages[-1])
    return guard_request("User", messages, policy, config.window_turns)


def write_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, ensure_ascii=False) + "\n")
