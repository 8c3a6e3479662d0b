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
from guardgraph.nodes.checks.request import (
    ConversationError,
    GuardRequest,
    content_text,
    guard_request,
    turns_from_messages,
)
from guardgraph.nodes.checks.run import first_line
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
        str | None,
        typer.Option(
            help="Llama Guard hub id or local path (or the model name at --guard-endpoint; with --guard-backend "
            "offline, an offline guard artifact folder)."
        ),
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
OPTION_OF_FIELD = {field_name: option for option, field_name in CONFIG_FIELD.items()}
DEBUG_ENV = "GUARDGRAPH_DEBUG"


def fail(message: str, code: int = 2) -> NoReturn:
    """Print one readable error line and exit; never a stack trace."""
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def option_name(name: str) -> str:
    """The command-line spelling of an option or config field: ``guard_timeout_s`` -> ``--guard-timeout``."""
    return "--" + OPTION_OF_FIELD.get(name, name).replace("_", "-")


def error_line(error: BaseException) -> str:
    """One line for ``error``: a validation error's first problem (naming the option), else the first line of
    its message."""
    if isinstance(error, ValidationError):
        problems = error.errors()
        if problems:
            location = problems[0]["loc"]
            if location and location[0] in GuardGraphConfig.model_fields:
                where = option_name(str(location[0]))
            else:
                where = ".".join(str(part) for part in location).replace("_", "-") or "options"
            return f"{where}: {problems[0]['msg'].removeprefix('Value error, ')}"
    return first_line(error) or type(error).__name__


def unicode_problem(text: str) -> str | None:
    """Why ``text`` is not valid Unicode text, or None: a byte that was not UTF-8 (Python keeps it as a
    surrogate escape) or a lone surrogate, neither of which a guard can read."""
    for position, char in enumerate(text):
        if "\udc80" <= char <= "\udcff":
            return f"not valid UTF-8 (byte 0x{ord(char) - 0xDC00:02x} at character {position})"
        if "\ud800" <= char <= "\udfff":
            return f"not valid Unicode text (a lone surrogate U+{ord(char):04X} at character {position})"
    return None


def _label(parameter: inspect.Parameter) -> str:
    """How a command's own parameter is named on the command line: ``TEXT`` for an argument, else its option."""
    for meta in getattr(parameter.annotation, "__metadata__", ()):
        if isinstance(meta, typer.models.OptionInfo):
            return option_name(parameter.name)
    return parameter.name.upper()


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
        labels = {p.name: _label(p) for p in own} | {name: option_name(name) for name in options}

        @functools.wraps(func)
        def command(**kwargs: Any) -> Any:
            for name, value in kwargs.items():
                problem = unicode_problem(value) if isinstance(value, str) else None
                if problem:
                    fail(f"{labels[name]}: {problem}")
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
            text = content_text(item["content"])
        except ConversationError as error:
            raise ConversationError(f"{path}: message [{index}]: {error}") from None
        if not text.strip():
            raise ConversationError(f"{path}: message [{index}] is empty")
        problem = unicode_problem(text)
        if problem:
            raise ConversationError(f"{path}: message [{index}]: {problem}")
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
