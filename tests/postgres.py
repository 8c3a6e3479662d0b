"""A throwaway PostgreSQL cluster for tests: started in a temporary folder on a free loopback port, stopped after.

The cluster runs as a non-root user: the current one, or ``postgres`` (through ``runuser``) when the tests run
as root; its data folder, log and unix socket all live in one temporary folder owned by that user, removed on
stop. Trust authentication on 127.0.0.1 only, superuser ``postgres``. The binaries come from
``$GUARDGRAPH_PG_BIN``, else ``/usr/lib/postgresql/15/bin`` (Debian's ``postgresql-15``, which ``.ci/run``
installs when it is missing), else the folder of ``pg_ctl`` on ``PATH``.

``conftest.py`` starts one cluster per test session (fixture ``postgres_server``); each test that writes
gets a database of its own (``postgres_url``). ``python -m tests.soak`` starts its own.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg

BIN_ENV = "GUARDGRAPH_PG_BIN"
DEBIAN_BIN = Path("/usr/lib/postgresql/15/bin")
RUN_AS = "postgres"  # the user the cluster runs as when the tests run as root
START_TIMEOUT_S = 60


class PostgresUnavailable(RuntimeError):
    """The PostgreSQL binaries (or a non-root user to run them) are missing."""


def find_bin_dir() -> Path:
    """Where initdb and pg_ctl are; a clear error naming what to install when they are nowhere."""
    candidates = [Path(os.environ[BIN_ENV])] if os.environ.get(BIN_ENV) else []
    candidates.append(DEBIAN_BIN)
    on_path = shutil.which("pg_ctl")
    if on_path:
        candidates.append(Path(on_path).parent)
    for folder in candidates:
        if (folder / "initdb").is_file() and (folder / "pg_ctl").is_file():
            return folder
    raise PostgresUnavailable(
        f"PostgreSQL binaries not found in {', '.join(map(str, candidates))}: "
        f"apt-get install postgresql-15 (.ci/run does), or set {BIN_ENV}"
    )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class PostgresServer:
    """One throwaway cluster. ``start()`` / ``stop()``, ``restart()``, and per-test databases."""

    def __init__(self, bin_dir: Path | None = None) -> None:
        self.bin_dir = bin_dir or find_bin_dir()
        self.root: Path | None = None
        self.port = 0
        self.running = False
        if os.geteuid() == 0:
            try:
                self.user: pwd.struct_passwd | None = pwd.getpwnam(RUN_AS)
            except KeyError:
                raise PostgresUnavailable(
                    f"running as root and there is no {RUN_AS!r} user to run PostgreSQL as"
                ) from None
        else:
            self.user = None

    @property
    def data(self) -> Path:
        assert self.root is not None, "the server was never started"
        return self.root / "data"

    def url(self, dbname: str = "postgres") -> str:
        """The URL a client uses, the shape the CLI's ``--db`` and ``GUARDGRAPH_DB`` take."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def _run(self, *args: str, timeout: float = START_TIMEOUT_S) -> None:
        command = [str(self.bin_dir / args[0]), *args[1:]]
        if self.user is not None:
            command = ["runuser", "-u", self.user.pw_name, "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=self.root)
        if result.returncode != 0:
            log = self.root / "log" if self.root else None
            tail = log.read_text(errors="replace")[-2000:] if log and log.exists() else ""
            raise RuntimeError(f"{' '.join(args[:2])} failed ({result.returncode}): {result.stderr.strip()}\n{tail}")

    def start(self) -> PostgresServer:
        """initdb in a fresh temporary folder, then start the server on a free loopback port."""
        self.root = Path(tempfile.mkdtemp(prefix="guardgraph-pg-"))
        if self.user is not None:
            os.chown(self.root, self.user.pw_uid, self.user.pw_gid)
        self.root.chmod(0o700)
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
        atexit.register(self.stop)
        for attempt in range(3):  # another process may take the free port between the probe and the start
            self.port = free_port()
            try:
                self.start_server()
                return self
            except RuntimeError:
                if attempt == 2:
                    raise
        return self

    def start_server(self) -> None:
        """Start (or start again) the cluster on its port; returns once it accepts connections."""
        # fsync off: the data is thrown away, and stops and restarts take a fraction of a second instead of
        # seconds (a clean shutdown still writes everything out; only an OS crash could lose data)
        options = (
            f"-c listen_addresses=127.0.0.1 -c port={self.port} -c unix_socket_directories={self.root} -c fsync=off"
        )
        self._run("pg_ctl", "start", "-D", str(self.data), "-l", str(self.root / "log"), "-w", "-o", options)
        self.running = True

    def stop_server(self) -> None:
        """Stop the cluster (fast shutdown: open sessions are disconnected), keeping its data."""
        if self.running:
            self._run("pg_ctl", "stop", "-D", str(self.data), "-m", "fast", "-w")
            self.running = False

    def restart(self) -> None:
        """Stop and start again on the same port: every open connection is cut, every table kept."""
        self.stop_server()
        self.start_server()

    def stop(self) -> None:
        """Stop the cluster and remove its folder."""
        with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
            self.stop_server()
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None
        atexit.unregister(self.stop)

    def create_database(self, prefix: str = "test") -> str:
        """A new empty database; returns its URL."""
        name = f"{prefix}_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(self.url(), autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def throwaway_postgres() -> Iterator[PostgresServer]:
    """A started cluster for the length of the ``with`` block."""
    with PostgresServer() as server:
        yield server
