"""One turn at a time per conversation thread, across threads, tasks and processes: a lock per thread id.

A turn reads the thread's latest checkpoint, runs, and writes new ones; two turns on one thread that
overlap both start from the same checkpoint and fork the thread (one reply survives, the other only in an
abandoned branch of the history). Holding the thread's lock from before the read to after the last write
puts overlapping turns one after another. Each store has the lock its database can give:

- memory (one process): a ``threading.Lock`` per thread id;
- SQLite (processes on one machine): a one-byte lock at the thread id's offset in the database's
  ``-turns`` companion file (Linux open file description locks: per open file, so threads of one process
  exclude each other too; the kernel releases it when the holder dies); elsewhere the whole file;
- Postgres (processes anywhere): a session advisory lock, released by the server when the session ends,
  a killed worker's included.

A lock not obtained within ``wait_s`` raises :class:`ThreadBusyError`: the second turn is refused,
never run on a stale checkpoint. A Postgres lock whose session ends during the turn (the server restarted)
fails the turn when it ends: for a while nothing kept other turns off the thread.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import errno
import fcntl
import hashlib
import os
import struct
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

if TYPE_CHECKING:
    from psycopg import AsyncConnection, Connection
    from psycopg_pool import AsyncConnectionPool, ConnectionPool

Release = Callable[[], None]
T = TypeVar("T")

# The advisory lock's two 32-bit keys: guardgraph's namespace, then the thread id's hash. Two thread ids with
# the same hash only wait for each other.
LOCK_SQL = "SELECT pg_advisory_lock(hashtext('guardgraph.turn'), hashtext(%s))"
UNLOCK_SQL = "SELECT pg_advisory_unlock(hashtext('guardgraph.turn'), hashtext(%s))"
LOCK_TIMEOUT_SQL = "SELECT set_config('lock_timeout', %s, false)"
FIRST_PAUSE_S, LAST_PAUSE_S = 0.005, 0.1  # polling backoff for the locks without a blocking wait


class ThreadBusyError(RuntimeError):
    """Another turn on the thread held its lock longer than this turn may wait."""

    def __init__(self, thread_id: str, wait_s: float) -> None:
        super().__init__(f"thread {thread_id!r} is busy: another turn on it did not finish within {wait_s:g} s")


class TurnLocks(Protocol):
    """Locks for turns of a sync graph (``invoke``, ``stream``)."""

    def hold(self, thread_id: str) -> contextlib.AbstractContextManager[None]: ...


class AsyncTurnLocks(Protocol):
    """Locks for turns of an async graph (``ainvoke``, ``astream``)."""

    def ahold(self, thread_id: str) -> contextlib.AbstractAsyncContextManager[None]: ...


def _pauses(wait_s: float) -> Iterator[float]:
    """Sleeps between attempts: growing from 5 ms to 100 ms, ending at ``wait_s`` from the first call."""
    deadline = time.monotonic() + wait_s
    pause = FIRST_PAUSE_S
    while (left := deadline - time.monotonic()) > 0:
        yield min(pause, left)
        pause = min(pause * 2, LAST_PAUSE_S)


def poll(attempt: Callable[[], T | None], wait_s: float) -> T | None:
    """``attempt()`` until it returns something or ``wait_s`` has passed (then None)."""
    result = attempt()
    for pause in _pauses(wait_s):
        if result is not None:
            break
        time.sleep(pause)
        result = attempt()
    return result


async def apoll(attempt: Callable[[], Awaitable[T | None]], wait_s: float) -> T | None:
    """:func:`poll` for a coroutine, sleeping without blocking the event loop."""
    result = await attempt()
    for pause in _pauses(wait_s):
        if result is not None:
            break
        await asyncio.sleep(pause)
        result = await attempt()
    return result


class PolledLocks(abc.ABC):
    """Locks taken by trying again until ``wait_s`` has passed; ``hold`` for threads, ``ahold`` for tasks."""

    def __init__(self, wait_s: float) -> None:
        self.wait_s = wait_s

    @abc.abstractmethod
    def try_lock(self, thread_id: str) -> Release | None:
        """Take the lock now and return its release, or None when another turn holds it."""

    def _taken(self, release: Release | None, thread_id: str) -> Release:
        if release is None:
            raise ThreadBusyError(thread_id, self.wait_s)
        return release

    @contextlib.contextmanager
    def hold(self, thread_id: str) -> Iterator[None]:
        release = self._taken(poll(lambda: self.try_lock(thread_id), self.wait_s), thread_id)
        try:
            yield
        finally:
            release()

    @contextlib.asynccontextmanager
    async def ahold(self, thread_id: str) -> AsyncIterator[None]:
        async def attempt() -> Release | None:
            return self.try_lock(thread_id)

        release = self._taken(await apoll(attempt, self.wait_s), thread_id)
        try:
            yield
        finally:
            release()


class LocalLocks(PolledLocks):
    """In-memory threads: one lock per thread id, within this process."""

    def __init__(self, wait_s: float) -> None:
        super().__init__(wait_s)
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def try_lock(self, thread_id: str) -> Release | None:
        with self._guard:
            lock = self._locks.setdefault(thread_id, threading.Lock())
        return lock.release if lock.acquire(blocking=False) else None


# struct flock on Linux: short l_type, short l_whence, off_t l_start, off_t l_len, pid_t l_pid (0 for OFD locks).
FLOCK = "hhqqi"
OFD_SETLK: int | None = getattr(fcntl, "F_OFD_SETLK", None)


def lock_offset(thread_id: str) -> int:
    """The byte of the lock file that stands for ``thread_id`` (below 2**62, so any off_t holds it)."""
    return int.from_bytes(hashlib.sha256(thread_id.encode("utf-8")).digest()[:8], "big") >> 2


class FileLocks(PolledLocks):
    """SQLite's threads: a byte-range lock per thread id on ``path`` (the database's ``-turns`` companion)."""

    def __init__(self, path: Path, wait_s: float) -> None:
        super().__init__(wait_s)
        self.path = path

    def try_lock(self, thread_id: str) -> Release | None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if OFD_SETLK is not None:
                fcntl.fcntl(fd, OFD_SETLK, struct.pack(FLOCK, fcntl.F_WRLCK, os.SEEK_SET, lock_offset(thread_id), 1, 0))
            else:  # no open file description locks: the whole file, one turn at a time per database
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            os.close(fd)
            if error.errno in (errno.EACCES, errno.EAGAIN, errno.EWOULDBLOCK):
                return None
            raise
        return lambda: os.close(fd)  # closing the file releases its lock


def lock_timeout_setting(wait_s: float) -> str:
    """``lock_timeout`` for the lock sessions: how long ``pg_advisory_lock`` waits."""
    return f"{max(1, round(wait_s * 1000))}ms"


def lock_session_setup(wait_s: float) -> Callable[[Connection[Any]], None]:
    """The lock pool's ``configure``: each new session waits at most ``wait_s`` for a lock."""

    def configure(conn: Connection[Any]) -> None:
        conn.execute(LOCK_TIMEOUT_SQL, (lock_timeout_setting(wait_s),))

    return configure


def async_lock_session_setup(wait_s: float) -> Callable[[AsyncConnection[Any]], Awaitable[None]]:
    """:func:`lock_session_setup` for an async pool."""

    async def configure(conn: AsyncConnection[Any]) -> None:
        await conn.execute(LOCK_TIMEOUT_SQL, (lock_timeout_setting(wait_s),))

    return configure


def lost_lock(thread_id: str, error: Exception) -> Exception:
    """The error of a turn whose lock session ended under it (a database restart, a dropped connection).

    The turn's own writes may have gone through on fresh connections, but for a while nothing kept other
    turns off the thread: the turn is reported failed rather than silently trusted.
    """
    from psycopg import OperationalError

    return OperationalError(
        f"the session holding thread {thread_id!r}'s lock was lost during the turn, so another turn may have run "
        f"on the thread meanwhile ({str(error).strip().splitlines()[0] if str(error).strip() else 'connection lost'})"
    )


class PostgresLocks:
    """Postgres advisory locks, one pooled session per turn in progress (sync graphs)."""

    def __init__(self, pool: ConnectionPool[Any], wait_s: float) -> None:
        self.pool = pool
        self.wait_s = wait_s

    @contextlib.contextmanager
    def hold(self, thread_id: str) -> Iterator[None]:
        from psycopg import OperationalError
        from psycopg.errors import LockNotAvailable

        with self.pool.connection() as conn:
            try:
                conn.execute(LOCK_SQL, (thread_id,))
            except LockNotAvailable:
                raise ThreadBusyError(thread_id, self.wait_s) from None
            try:
                yield
            except BaseException:
                with contextlib.suppress(OperationalError):  # a lost session has released its locks already
                    conn.execute(UNLOCK_SQL, (thread_id,))
                raise
            try:
                conn.execute(UNLOCK_SQL, (thread_id,))
            except OperationalError as error:
                raise lost_lock(thread_id, error) from error


class AsyncPostgresLocks:
    """Postgres advisory locks, one pooled session per turn in progress (async graphs)."""

    def __init__(self, pool: AsyncConnectionPool[Any], wait_s: float) -> None:
        self.pool = pool
        self.wait_s = wait_s

    @contextlib.asynccontextmanager
    async def ahold(self, thread_id: str) -> AsyncIterator[None]:
        from psycopg import OperationalError
        from psycopg.errors import LockNotAvailable

        async with self.pool.connection() as conn:
            try:
                await conn.execute(LOCK_SQL, (thread_id,))
            except LockNotAvailable:
                raise ThreadBusyError(thread_id, self.wait_s) from None
            try:
                yield
            except BaseException:
                with contextlib.suppress(OperationalError):
                    await conn.execute(UNLOCK_SQL, (thread_id,))
                raise
            try:
                await conn.execute(UNLOCK_SQL, (thread_id,))
            except OperationalError as error:
                raise lost_lock(thread_id, error) from error
