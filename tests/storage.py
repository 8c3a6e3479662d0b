"""Everything a checkpointer holds, as text to search: for tests that prove something was never stored.

:func:`stored_text` reads a saver two ways: through its API (every checkpoint of every thread's history,
with its metadata and pending writes) and underneath it (every entry of an ``InMemorySaver``'s storage,
or every row of every table of its SQL database). Bytes are decoded as UTF-8, which is how the
checkpoint serializer stores text. :func:`sql_text` reads any DB-API connection given its tables, so a
checkpointer over another database reuses it (``sqlite_tables`` lists SQLite's; PostgreSQL lists its own
with ``SELECT tablename FROM pg_tables WHERE schemaname = current_schema()``).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.checkpoint.memory import InMemorySaver


def api_text(saver: BaseCheckpointSaver) -> str:
    """Every checkpoint the saver lists, of every thread and namespace: values, metadata, pending writes."""
    parts: list[str] = []
    for saved in saver.list(None):
        parts += [repr(saved.config), repr(saved.checkpoint), repr(saved.metadata), repr(saved.pending_writes)]
    return "\n".join(parts)


def _texts(value: Any) -> Iterator[str]:
    """Every string and byte string inside ``value`` (nested containers walked), as text."""
    if isinstance(value, bytes | bytearray | memoryview):
        yield bytes(value).decode("utf-8", errors="replace")
    elif isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _texts(key)
            yield from _texts(item)
    elif isinstance(value, list | tuple | set | frozenset):
        for item in value:
            yield from _texts(item)
    elif value is not None:
        yield repr(value)


def sqlite_tables(connection: sqlite3.Connection) -> list[str]:
    return [name for (name,) in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]


def sql_text(connection: Any, tables: Iterable[str]) -> str:
    """Every cell of every row of ``tables``, through a DB-API connection."""
    parts: list[str] = []
    for table in tables:
        cursor = connection.cursor()
        try:
            cursor.execute(f'SELECT * FROM "{table}"')  # the table names come from the database itself
            for row in cursor.fetchall():
                parts.extend(_texts(list(row)))
        finally:
            cursor.close()
    return "\n".join(parts)


def raw_text(saver: BaseCheckpointSaver) -> str:
    """What lies underneath the saver's API: its in-memory tables, or every row of its SQLite database."""
    if isinstance(saver, InMemorySaver):
        return "\n".join(_texts([saver.storage, saver.writes, saver.blobs]))
    connection = getattr(saver, "conn", None)
    if isinstance(connection, sqlite3.Connection):
        return sql_text(connection, sqlite_tables(connection))
    raise TypeError(f"no raw reader for {type(saver).__name__}: read its connection with sql_text")


def stored_text(saver: BaseCheckpointSaver) -> str:
    """All a saver holds, read through its API and underneath it."""
    return api_text(saver) + "\n" + raw_text(saver)


def file_text(database: Path) -> str:
    """The bytes of a SQLite database and its write-ahead log, free pages included, as text."""
    files = [database, database.with_name(database.name + "-wal")]
    return "\n".join(path.read_bytes().decode("utf-8", errors="replace") for path in files if path.exists())


def saved_messages(saver: BaseCheckpointSaver, thread: str) -> list[tuple[str, str]]:
    """The messages of ``thread``'s latest checkpoint, as (type, text) pairs."""
    saved = saver.get_tuple({"configurable": {"thread_id": thread}})
    messages = [] if saved is None else saved.checkpoint["channel_values"].get("messages", [])
    return [(message.type, str(message.content)) for message in messages]
