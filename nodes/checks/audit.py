"""The audit log: one JSON line per guard decision, safe under concurrent threads and processes.

Each record holds: ``time`` (UTC, ISO 8601), ``thread``, ``role``, ``policy`` (name), ``policy_sha256``
(sha256 of the policy's canonical JSON), ``guard`` (the guard's name: format and model), ``outcome``
(safe, unsafe, error, bypass, unparseable), ``categories``, ``flagged_by`` (which part flagged it: ``guard``,
``examples`` or ``both``; null when nothing did), ``score``, ``latency_ms``, ``enforced``
(False in shadow mode), ``blocked``, ``reason``, and, only when ``include_content`` is set (CLI
``--audit-content``), ``content``: the checked message text.

Writes: the file is opened with ``O_APPEND`` and each record is one complete line, written with one
``os.write`` while holding a lock per path in this process and an exclusive ``flock`` on the file across
processes; so lines from threads and from several worker processes sharing one file never interleave or
tear, whatever their length. A writer killed in the middle of its line leaves at most that fragment: the
next writer starts its record on a new line, so no whole record is ever joined to it.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from guardgraph.nodes.checks.request import GuardRequest
from guardgraph.nodes.checks.verdict import Verdict
from guardgraph.policies.model import Policy

_LOCKS: dict[str, threading.Lock] = {}
_LOCKS_GUARD = threading.Lock()
_HASHES: dict[int, tuple[Policy, str]] = {}


def policy_hash(policy: Policy) -> str:
    """sha256 of the policy's canonical JSON (sorted keys, no whitespace, UTF-8)."""
    cached = _HASHES.get(id(policy))
    if cached is not None and cached[0] is policy:
        return cached[1]
    canonical = json.dumps(policy.model_dump(mode="json"), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    digest = hashlib.sha256(canonical.encode("utf-8")).hexdigest()
    _HASHES[id(policy)] = (policy, digest)
    return digest


def _lock_for(path: Path) -> threading.Lock:
    key = str(path.resolve())
    with _LOCKS_GUARD:
        return _LOCKS.setdefault(key, threading.Lock())


class AuditLog:
    """Appends guard decisions to ``path`` as JSON lines; message text only with ``include_content``."""

    def __init__(self, path: str | os.PathLike[str], include_content: bool = False) -> None:
        self.path = Path(path)
        self.include_content = include_content
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = _lock_for(self.path)

    def record(
        self,
        verdict: Verdict,
        *,
        request: GuardRequest | None = None,
        thread_id: str | None = None,
        guard: object | None = None,
        policy: Policy | None = None,
    ) -> dict[str, Any]:
        """Write one line for ``verdict`` and return the record."""
        policy = policy or (request.policy if request is not None else None)
        entry: dict[str, Any] = {
            "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "thread": thread_id,
            "role": verdict.role,
            "policy": policy.name if policy is not None else None,
            "policy_sha256": policy_hash(policy) if policy is not None else None,
            "guard": verdict.guard or getattr(guard, "name", None),
            "outcome": verdict.outcome.value,
            "categories": verdict.codes,
            "flagged_by": verdict.flagged_by,
            "score": verdict.score,
            "latency_ms": round(verdict.latency_ms, 3),
            "enforced": verdict.enforced,
            "blocked": verdict.blocks,
            "reason": verdict.reason,
        }
        if verdict.metadata.get("windows"):
            entry["windows"] = verdict.metadata["windows"]
        if self.include_content:
            entry["content"] = request.checked_text if request is not None else None
        self.write(entry)
        return entry

    def write(self, entry: dict[str, Any]) -> None:
        line = (json.dumps(entry, ensure_ascii=False, default=str) + "\n").encode("utf-8")
        with self._lock:
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)  # released when the file is closed
                size = os.fstat(fd).st_size
                if size and os.pread(fd, 1, size - 1) != b"\n":  # a writer died mid-line
                    line = b"\n" + line
                written = os.write(fd, line)
                while written < len(line):  # only on exotic file systems; the lock keeps it whole
                    written += os.write(fd, line[written:])
            finally:
                os.close(fd)


def read_audit(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Every record of an audit file (for tests and analysis)."""
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]
