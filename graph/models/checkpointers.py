"""Where conversations persist: in memory, a SQLite file or PostgreSQL; with one lock per conversation thread.

``db`` (the CLI's ``--db``, ``GUARDGRAPH_DB`` for your own worker processes) is one of:

- ``None``: in memory, for this process only;
- a file path: SQLite (the file and its folder are created), for processes on one machine;
- ``postgresql://user[:password]@host[:port]/dbname[?param=value...]`` (``postgres://`` too; libpq's URL
  parameters such as ``sslmode`` or ``connect_timeout`` pass through): PostgreSQL, for any number of
  worker processes on any number of machines.

Any other ``scheme://`` is refused: a URL is never taken for a file name.

:func:`open_persistence` serves a sync graph (``invoke``, ``stream``: LangGraph's ``PostgresSaver`` on a
connection pool), :func:`aopen_persistence` an async one (``ainvoke``, ``astream``: ``AsyncPostgresSaver``
on an async pool). Both connect and create the tables before returning, so an unreachable or misconfigured
database is one :class:`DatabaseError` naming it, before any model loads. The :class:`Persistence` they return
holds the checkpointer to compile the graph with and ``turn(thread_id)``, to hold around each turn so turns
on one thread run one after another across processes (``guardgraph.graph.models.turn_locks``); a database
error during a turn becomes a :class:`DatabaseError` too.

Postgres pools follow langgraph-checkpoint-postgres: connections with ``autocommit``, ``prepare_threshold=0``
and ``dict_row``. Each connection is checked when it is taken from the pool, so after a database restart the
next turn reconnects instead of failing on a dead connection. A process holds at most two connections for
checkpoints (the saver uses one at a time) and one per turn in progress for the turn locks (at most
``max_turns``, opened on demand).
"""

from __future__ import annotations

import contextlib
import os
import re
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.checkpoint.memory import InMemorySaver

from guardgraph.graph.models.turn_locks import (
    AsyncPostgresLocks,
    AsyncTurnLocks,
    FileLocks,
    LocalLocks,
    PostgresLocks,
    TurnLocks,
    apoll,
    async_lock_session_setup,
    lock_session_setup,
    poll,
)

POSTGRES_SCHEMES = frozenset({"postgresql", "postgres"})
URL_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
TURN_WAIT_S = 300.0  # how long a turn waits for another turn on its thread (a slow model's whole reply)
TIMEOUT_S = 10.0  # connecting to the database, and waiting for a pooled connection
MAX_TURNS = 32  # turns in progress at once per process (one lock session each)
SQLITE_BUSY_TIMEOUT_S = 30.0  # another process holding SQLite's write lock
# langgraph-checkpoint-postgres's connection settings (its from_conn_string and pool defaults).
CONNECTION_KWARGS: dict[str, Any] = {"autocommit": True, "prepare_threshold": 0}
# Workers that start together on an empty database create the tables one after another. They poll for the
# lock: a session blocked in pg_advisory_lock would hold a transaction open, and the migrations' CREATE
# INDEX CONCURRENTLY waits for every open transaction, the waiting session's included (a deadlock).
SETUP_LOCK_SQL = "SELECT pg_try_advisory_lock(hashtext('guardgraph.setup'), 0) AS locked"
SETUP_WAIT_S = 120.0


class DatabaseError(RuntimeError):
    """The database cannot be used: unreachable, misconfigured, or lost during a turn. The message names it."""


@dataclass(frozen=True)
class PostgresURL:
    """A ``postgresql://`` URL; :attr:`display` is the URL without its password, for messages."""

    url: str

    @property
    def display(self) -> str:
        shown = re.sub(r"(://[^:/@?]*):[^@/?]*@", r"\1:***@", self.url)
        return re.sub(r"(password=)[^&]*", r"\1***", shown)

    def conninfo(self, timeout_s: float) -> str:
        """The URL, with ``connect_timeout`` added unless it sets its own."""
        from psycopg.conninfo import conninfo_to_dict, make_conninfo

        if "connect_timeout" in conninfo_to_dict(self.url):
            return self.url
        return make_conninfo(self.url, connect_timeout=max(1, round(timeout_s)))


def parse_db(db: str | os.PathLike[str] | None) -> Path | PostgresURL | None:
    """``None`` (memory), a SQLite file's path, or a Postgres URL; any other URL is a :class:`DatabaseError`."""
    if db is None:
        return None
    text = os.fspath(db)
    if not text.strip():
        raise DatabaseError("db: empty; give a SQLite file or postgresql://user@host:port/dbname")
    match = URL_SCHEME.match(text)
    if match is None:
        return Path(text).expanduser()
    if match.group(1).lower() in POSTGRES_SCHEMES:
        return PostgresURL(text)
    shown = PostgresURL(text).display
    raise DatabaseError(f"{shown}: unsupported database URL; give a SQLite file or postgresql://user@host:port/dbname")


@dataclass
class _Store:
    """What both persistence kinds share: the name for messages, the checkpointer, which errors are the database's."""

    name: str
    checkpointer: BaseCheckpointSaver
    errors: tuple[type[BaseException], ...]

    def database_error(self, error: BaseException) -> DatabaseError:
        return DatabaseError(f"{self.name}: {error}")


@dataclass
class Persistence(_Store):
    """A sync graph's checkpointer, and ``turn(thread_id)``, the thread's lock, to hold around each turn."""

    locks: TurnLocks = field(default_factory=lambda: LocalLocks(TURN_WAIT_S))
    closers: list[Callable[[], None]] = field(default_factory=list)

    @contextlib.contextmanager
    def turn(self, thread_id: str) -> Iterator[None]:
        """Hold ``thread_id``'s lock; a database error inside becomes a :class:`DatabaseError`."""
        try:
            with self.locks.hold(thread_id):
                yield
        except self.errors as error:
            raise self.database_error(error) from error

    def close(self) -> None:
        for close in self.closers:
            close()
        self.closers.clear()

    def __enter__(self) -> Persistence:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class AsyncPersistence(_Store):
    """An async graph's checkpointer, and ``turn(thread_id)`` (``async with``), the thread's lock."""

    locks: AsyncTurnLocks = field(default_factory=lambda: LocalLocks(TURN_WAIT_S))
    closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    @contextlib.asynccontextmanager
    async def turn(self, thread_id: str) -> AsyncIterator[None]:
        """Hold ``thread_id``'s lock; a database error inside becomes a :class:`DatabaseError`."""
        try:
            async with self.locks.ahold(thread_id):
                yield
        except self.errors as error:
            raise self.database_error(error) from error

    async def aclose(self) -> None:
        for close in self.closers:
            await close()
        self.closers.clear()

    async def __aenter__(self) -> AsyncPersistence:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def turn_lock_file(db: Path) -> Path:
    """The SQLite database's companion file that carries its turn locks."""
    return db.with_name(db.name + "-turns")


def _sqlite_connect(db: Path) -> sqlite3.Connection:
    """The database file, created with its folder; SQLite's own errors become a DatabaseError naming it."""
    try:
        db.parent.mkdir(parents=True, exist_ok=True)
        return sqlite3.connect(str(db), check_same_thread=False, timeout=SQLITE_BUSY_TIMEOUT_S)
    except (OSError, sqlite3.Error) as error:
        raise DatabaseError(f"{db}: cannot open: {error}") from None


def open_persistence(
    db: str | os.PathLike[str] | None,
    *,
    turn_wait_s: float = TURN_WAIT_S,
    timeout_s: float = TIMEOUT_S,
    max_turns: int = MAX_TURNS,
) -> Persistence:
    """The checkpointer and turn locks of ``db`` for a sync graph; the database is reached and set up first."""
    where = parse_db(db)
    if where is None:
        return Persistence("memory", InMemorySaver(), (), LocalLocks(turn_wait_s))
    if isinstance(where, Path):
        from langgraph.checkpoint.sqlite import SqliteSaver

        # One connection shared by all threads is safe: SqliteSaver serializes every use of it under its
        # own lock; the busy timeout covers another process holding the write lock.
        connection = _sqlite_connect(where)
        try:
            SqliteSaver(connection).setup()
            # WAL (set by setup) + synchronous=NORMAL: commits survive a process crash; only an OS crash or
            # power loss may drop the last few, and a commit does not wait for an fsync.
            connection.execute("PRAGMA synchronous=NORMAL")
        except sqlite3.Error as error:
            connection.close()
            raise DatabaseError(f"{where}: cannot use as a SQLite database: {error}") from None
        locks = FileLocks(turn_lock_file(where), turn_wait_s)
        return Persistence(str(where), SqliteSaver(connection), (sqlite3.Error,), locks, [connection.close])
    return _open_postgres(where, turn_wait_s, timeout_s, max_turns)


def _pool_settings(timeout_s: float, max_turns: int) -> dict[str, dict[str, Any]]:
    """The two pools of a process: checkpoints (the saver uses one connection at a time) and turn locks."""
    from psycopg.rows import dict_row

    checkpoints = {"min_size": 1, "max_size": 2, "kwargs": {**CONNECTION_KWARGS, "row_factory": dict_row}}
    turns = {"min_size": 0, "max_size": max_turns, "kwargs": CONNECTION_KWARGS}
    return {
        "checkpoints": {**checkpoints, "timeout": timeout_s, "name": "guardgraph-checkpoints"},
        "turns": {**turns, "timeout": timeout_s, "name": "guardgraph-turns"},
    }


def _locked(row: Any) -> bool | None:
    """The setup lock's row: True when taken, None (try again) when another process holds it."""
    return True if row is not None and row["locked"] else None


def _open_postgres(url: PostgresURL, turn_wait_s: float, timeout_s: float, max_turns: int) -> Persistence:
    import psycopg
    from langgraph.checkpoint.postgres import PostgresSaver
    from psycopg_pool import ConnectionPool

    settings = _pool_settings(timeout_s, max_turns)
    try:
        conninfo = url.conninfo(timeout_s)
        with psycopg.Connection.connect(conninfo, **settings["checkpoints"]["kwargs"]) as conn:
            # the lock is released when the connection closes
            if not poll(lambda: _locked(conn.execute(SETUP_LOCK_SQL).fetchone()), SETUP_WAIT_S):
                raise DatabaseError(f"{url.display}: another process kept creating the tables for {SETUP_WAIT_S:g} s")
            PostgresSaver(conn).setup()
    except psycopg.Error as error:
        raise DatabaseError(f"{url.display}: cannot open: {error}") from None
    check = ConnectionPool.check_connection
    configure = lock_session_setup(turn_wait_s)
    pools = {
        "checkpoints": ConnectionPool(conninfo, check=check, open=True, **settings["checkpoints"]),
        "turns": ConnectionPool(conninfo, configure=configure, check=check, open=True, **settings["turns"]),
    }
    return Persistence(
        url.display,
        PostgresSaver(pools["checkpoints"]),
        (psycopg.Error,),
        PostgresLocks(pools["turns"], turn_wait_s),
        [pool.close for pool in pools.values()],
    )


async def aopen_persistence(
    db: str | os.PathLike[str] | None,
    *,
    turn_wait_s: float = TURN_WAIT_S,
    timeout_s: float = TIMEOUT_S,
    max_turns: int = MAX_TURNS,
) -> AsyncPersistence:
    """:func:`open_persistence` for an async graph: LangGraph's async savers, async pools."""
    where = parse_db(db)
    if where is None:
        return AsyncPersistence("memory", InMemorySaver(), (), LocalLocks(turn_wait_s))
    if isinstance(where, Path):
        import aiosqlite
        from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

        _sqlite_connect(where).close()  # the same checks and messages as the sync path
        connection = await aiosqlite.connect(str(where), timeout=SQLITE_BUSY_TIMEOUT_S)
        saver = AsyncSqliteSaver(connection)
        try:
            await saver.setup()
            await connection.execute("PRAGMA synchronous=NORMAL")
        except sqlite3.Error as error:
            await connection.close()
            raise DatabaseError(f"{where}: cannot use as a SQLite database: {error}") from None
        locks = FileLocks(turn_lock_file(where), turn_wait_s)
        return AsyncPersistence(str(where), saver, (sqlite3.Error,), locks, [connection.close])
    return await _aopen_postgres(where, turn_wait_s, timeout_s, max_turns)


async def _aopen_postgres(url: PostgresURL, turn_wait_s: float, timeout_s: float, max_turns: int) -> AsyncPersistence:
    import psycopg
    from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
    from psycopg_pool import AsyncConnectionPool

    settings = _pool_settings(timeout_s, max_turns)
    try:
        conninfo = url.conninfo(timeout_s)
        async with await psycopg.AsyncConnection.connect(conninfo, **settings["checkpoints"]["kwargs"]) as conn:

            async def setup_lock() -> bool | None:
                return _locked(await (await conn.execute(SETUP_LOCK_SQL)).fetchone())

            if not await apoll(setup_lock, SETUP_WAIT_S):
                raise DatabaseError(f"{url.display}: another process kept creating the tables for {SETUP_WAIT_S:g} s")
            await AsyncPostgresSaver(conn).setup()
    except psycopg.Error as error:
        raise DatabaseError(f"{url.display}: cannot open: {error}") from None
    check = AsyncConnectionPool.check_connection
    configure = async_lock_session_setup(turn_wait_s)
    pools = {
        "checkpoints": AsyncConnectionPool(conninfo, check=check, open=False, **settings["checkpoints"]),
        "turns": AsyncConnectionPool(conninfo, configure=configure, check=check, open=False, **settings["turns"]),
    }
    for pool in pools.values():
        await pool.open()
    return AsyncPersistence(
        url.display,
        AsyncPostgresSaver(pools["checkpoints"]),
        (psycopg.Error,),
        AsyncPostgresLocks(pools["turns"], turn_wait_s),
        [pool.close for pool in pools.values()],
    )


def build_checkpointer(db: str | os.PathLike[str] | None) -> BaseCheckpointSaver:
    """The checkpointer of ``db`` alone, for one process whose turns on a thread never overlap.

    Several processes, or overlapping turns, hold ``open_persistence(db).turn(thread_id)`` around each turn.
    """
    return open_persistence(db).checkpointer
