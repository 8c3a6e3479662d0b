"""Options every guardgraph command shares, gathered into a GuardGraphConfig, and one-line errors."""

from __future__ import annotations

import functools
import inspect
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from pydantic import ValidationError
from rich.console import Console

from graph.config import DEFAULT_POLICY, GuardGraphConfig
from graph.models import ModelSetupError
from nodes.conversation import ConversationError, Turn, turns_from_messages
from nodes.formats import UnknownFormatError
from policies.loader import PolicyError

err_console = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])

USER_ERRORS = (PolicyError, ConversationError, UnknownFormatError, ModelSetupError, ValidationError, OSError)

SHARED_OPTIONS: dict[str, Any] = {
    "policy": Annotated[str, typer.Option(help="Bundled policy name or path to a policy YAML file.")],
    "guard_format": Annotated[
        str | None, typer.Option(help="llama-guard-1|2|3|3-1b|4; default: the policy's format.")
    ],
    "guard_model": Annotated[
        str | None, typer.Option(help="Llama Guard hub id or local path (or the model name at --guard-endpoint).")
    ],
    "guard_endpoint": Annotated[
        str | None, typer.Option(help="OpenAI-compatible base URL serving the guard (vLLM, llama.cpp, TGI).")
    ],
    "chat_model": Annotated[str | None, typer.Option(help="Chat model hub id or local path.")],
    "chat_endpoint": Annotated[str | None, typer.Option(help="OpenAI-compatible base URL serving the chat model.")],
    "thread": Annotated[str, typer.Option(help="Conversation thread id (persists with --db).")],
    "db": Annotated[Path | None, typer.Option(help="SQLite file that keeps conversations across runs.")],
}
SHARED_DEFAULTS: dict[str, Any] = {name: None for name in SHARED_OPTIONS} | {
    "policy": DEFAULT_POLICY,
    "thread": "default",
}


def fail(message: str, code: int = 2) -> NoReturn:
    """Print one readable error line and exit; never a stack trace."""
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def with_config(func: F) -> F:
    """Add the shared options to a command and hand it a ``config`` (and ``thread``) instead."""
    signature = inspect.signature(func, eval_str=True)
    own = [p for p in signature.parameters.values() if p.name not in ("config", "thread")]
    shared = [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=SHARED_DEFAULTS[name], annotation=annotation)
        for name, annotation in SHARED_OPTIONS.items()
    ]
    wants_thread = "thread" in signature.parameters

    @functools.wraps(func)
    def command(**kwargs: Any) -> Any:
        shared_values = {name: kwargs.pop(name) for name in SHARED_OPTIONS}
        thread = shared_values.pop("thread")
        try:
            config = GuardGraphConfig(**shared_values, **kwargs.pop("_config_extra", {}))
            if wants_thread:
                kwargs["thread"] = thread
            return func(config=config, **kwargs)
        except USER_ERRORS as error:
            fail(str(error).splitlines()[0] if isinstance(error, ValidationError) else str(error))

    command.__signature__ = signature.replace(parameters=own + shared)  # type: ignore[attr-defined]
    command.__annotations__ = {}
    return command  # type: ignore[return-value]


def read_conversation(path: Path) -> tuple[Turn, ...]:
    """A JSON list of {"role": "user"|"assistant", "content": str}; errors name the file and the item."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ConversationError(f"{path}: not valid JSON: {error}") from None
    if not isinstance(data, list) or not data:
        raise ConversationError(f"{path}: expected a non-empty JSON list of {{role, content}} messages")
    for index, item in enumerate(data):
        if not isinstance(item, dict) or item.get("role") not in ("user", "assistant"):
            raise ConversationError(f"{path}: message [{index}] needs role 'user' or 'assistant'")
        if not isinstance(item.get("content"), str | list):
            raise ConversationError(f"{path}: message [{index}] needs text content")
    try:
        return turns_from_messages(data)
    except ConversationError as error:
        raise ConversationError(f"{path}: {error}") from None


def write_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, ensure_ascii=False) + "\n")
