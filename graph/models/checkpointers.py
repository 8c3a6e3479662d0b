"""Where conversations persist: in memory by default, a SQLite file with ``--db``."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.checkpoint.memory import InMemorySaver


class StorageError(RuntimeError):
    """The conversation file cannot be used; the message names it."""


def build_checkpointer(db: Path | None) -> BaseCheckpointSaver:
    """In memory by default; a SQLite file with ``--db`` so threads survive restarts."""
    if db is None:
        return InMemorySaver()
    from langgraph.checkpoint.sqlite import SqliteSaver

    try:
        db.parent.mkdir(parents=True, exist_ok=True)
        # One connection shared by all threads is safe: SqliteSaver serializes every use of it under its own
        # lock (tests/test_persistence.py runs 16 threads x 20 turns on it); the timeout covers another
        # process holding the write lock.
        connection = sqlite3.connect(str(db), check_same_thread=False, timeout=30)
        saver = SqliteSaver(connection)
        saver.setup()
        # WAL (set by setup) + synchronous=NORMAL: commits survive a process crash; only an OS crash or power
        # loss may drop the last few, and a commit does not wait for an fsync.
        connection.execute("PRAGMA synchronous=NORMAL")
    except (OSError, sqlite3.Error) as error:
        cause = getattr(error, "strerror", None) or error
        raise StorageError(f"{db}: cannot keep conversations there: {cause}") from None
    return saver
