"""The audit log: one complete JSON line per decision, also with concurrent threads and processes."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from guardgraph.nodes.checks.audit import AuditLog, policy_hash, read_audit
from guardgraph.nodes.checks.request import GuardRequest
from guardgraph.nodes.checks.run import GuardSettings, run_guard
from guardgraph.nodes.checks.verdict import CategoryHit, Outcome, Verdict
from guardgraph.policies import Policy, load_policy
from tests.fakes import scripted_llama_guard

ROOT = Path(__file__).resolve().parents[1]
FIELDS = {
    "time", "thread", "role", "policy", "policy_sha256", "guard", "outcome", "categories", "flagged_by", "score",
    "latency_ms", "enforced", "blocked", "reason",
}  # fmt: skip


def test_record_fields_and_no_content_by_default(
    tmp_path: Path, user_request: Callable[..., GuardRequest], llama_guard_3_policy: Policy
) -> None:
    log = AuditLog(tmp_path / "a.jsonl")
    guard = scripted_llama_guard("unsafe\nS9")
    run_guard(guard, user_request("secret text"), GuardSettings(audit=log), thread_id="th-1")
    (record,) = read_audit(tmp_path / "a.jsonl")
    assert set(record) == FIELDS
    assert record["thread"] == "th-1" and record["role"] == "User" and record["outcome"] == "unsafe"
    assert (
        record["categories"] == ["S9"] and record["policy"] == llama_guard_3_policy.name and record["blocked"] is True
    )
    assert record["guard"] == "llama-guard-3:scripted" and record["enforced"] is True
    canonical = json.dumps(
        llama_guard_3_policy.model_dump(mode="json"), sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )
    assert (
        record["policy_sha256"] == hashlib.sha256(canonical.encode()).hexdigest() == policy_hash(llama_guard_3_policy)
    )
    assert "secret text" not in (tmp_path / "a.jsonl").read_text()


def test_content_only_when_asked(tmp_path: Path, user_request: Callable[..., GuardRequest]) -> None:
    log = AuditLog(tmp_path / "a.jsonl", include_content=True)
    run_guard(scripted_llama_guard("safe"), user_request("héllo wörld"), GuardSettings(audit=log))
    assert read_audit(tmp_path / "a.jsonl")[0]["content"] == "héllo wörld"


def test_policy_hash_changes_with_the_policy(llama_guard_3_policy: Policy) -> None:
    assert policy_hash(llama_guard_3_policy) != policy_hash(llama_guard_3_policy.excluding("S1"))
    assert policy_hash(llama_guard_3_policy) == policy_hash(load_policy("llama-guard-3"))


def test_concurrent_threads_write_whole_lines(tmp_path: Path, user_request: Callable[..., GuardRequest]) -> None:
    path = tmp_path / "a.jsonl"
    log = AuditLog(path, include_content=True)
    big = "x" * 20_000  # far above PIPE_BUF: one write per line must still keep lines whole
    verdict = Verdict("User", Outcome.UNSAFE, (CategoryHit("S1", "Violent Crimes"),), score=0.9)

    def worker(index: int) -> None:
        for _ in range(50):
            log.record(verdict, request=user_request(f"{index}:{big}"), thread_id=f"t{index}")

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    records = read_audit(path)  # every line parses
    assert len(records) == 16 * 50
    assert all(r["content"] == f"{r['thread'][1:]}:{big}" for r in records)


WRITER = """
import sys
from guardgraph.nodes.checks.audit import AuditLog
from guardgraph.nodes.checks.verdict import Outcome, Verdict
log = AuditLog(sys.argv[1])
for i in range(int(sys.argv[3])):
    log.write({"writer": sys.argv[2], "i": i, "pad": "y" * 8000})
"""


def test_two_processes_write_whole_lines(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(path), name, "300"], cwd=ROOT) for name in ("a", "b")]
    for proc in procs:
        assert proc.wait(timeout=60) == 0
    records = read_audit(path)
    assert len(records) == 600
    for name in ("a", "b"):
        assert [r["i"] for r in records if r["writer"] == name] == list(range(300))


def test_a_line_cut_short_is_never_joined_to_the_next_record(tmp_path: Path) -> None:
    """A writer killed in the middle of its line leaves a fragment; the next record starts on a line of its own."""
    path = tmp_path / "a.jsonl"
    path.write_bytes(b'{"writer": "killed", "i": 0, "pad": "yyy')
    AuditLog(path).write({"writer": "next", "i": 1})
    fragment, line = path.read_bytes().split(b"\n")[:2]
    assert fragment.startswith(b'{"writer": "killed"') and json.loads(line) == {"writer": "next", "i": 1}
