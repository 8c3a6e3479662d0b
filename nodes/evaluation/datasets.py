"""Labeled evaluation rows: a JSONL data set read into EvalRows, each ready to become a GuardRequest.

Rows follow ``datasets/README.md``::

    {"id", "source", "task": "prompt" | "response" | "refusal", "prompt", "response",
     "label": "safe" | "unsafe", "orig_categories", "lg3_categories", ...}

* ``task: prompt`` rows become a User check on ``[user: prompt]``;
* ``task: response`` rows become an Agent check on ``[user: prompt, assistant: response]``;
* rows carrying ``conversation: [{"role", "content"}, ...]`` are checked as that conversation, the role
  taken from the last message (``user`` -> User check, ``assistant`` -> Agent check);
* ``task: refusal`` rows are skipped: refusal sets are labeled compliance/refusal, not safe/unsafe, so a
  guard's verdict cannot be scored against them. A file with nothing else is rejected.

The ground-truth harm categories are ``lg3_categories``, else ``categories``, else ``orig_categories``.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from guardgraph.nodes.checks.request import (
    ConversationError,
    GuardRequest,
    Turn,
    role_of_last,
    turns_from_messages,
    window,
)
from guardgraph.nodes.checks.verdict import Role
from guardgraph.policies.model import Policy

Label = Literal["safe", "unsafe"]
LABELS: tuple[str, ...] = ("safe", "unsafe")

SKIP_REFUSAL = "refusal-task rows (labeled compliance/refusal, not safe/unsafe: nothing to score a guard on)"


class EvalDataError(ValueError):
    """A data file that cannot be evaluated (malformed, or nothing with a safe/unsafe label)."""


@dataclass(frozen=True)
class EvalRow:
    """One labeled example, ready to become a GuardRequest under any policy."""

    id: str
    label: Label
    role: Role
    turns: tuple[Turn, ...]
    categories: tuple[str, ...] = ()
    source: str = ""

    def request(self, policy: Policy, window_turns: int | None = None) -> GuardRequest:
        """The guard request; ``window_turns`` keeps the last turns, as the guard node does in the graph."""
        return GuardRequest(role=self.role, turns=window(self.turns, window_turns), policy=policy)


@dataclass
class LoadedRows:
    """The evaluable rows of a file, and how many were skipped for which reason."""

    path: str
    rows: list[EvalRow]
    skipped: Counter[str] = field(default_factory=Counter)

    def skipped_messages(self) -> list[str]:
        return [f"skipped {count} {reason}" for reason, count in self.skipped.most_common()]


def ground_truth_categories(row: Mapping[str, Any]) -> tuple[str, ...]:
    """The row's harm categories: ``lg3_categories``, else ``categories``, else ``orig_categories``."""
    for key in ("lg3_categories", "categories", "orig_categories"):
        value = row.get(key)
        if isinstance(value, str):
            value = [value]
        if value:
            return tuple(str(item) for item in value if str(item).strip())
    return ()


def _conversation_turns(messages: Any, where: str) -> tuple[Turn, ...]:
    if not isinstance(messages, list) or not messages:
        raise EvalDataError(f"{where}: 'conversation' must be a non-empty list of {{role, content}} messages")
    for index, message in enumerate(messages):
        if not isinstance(message, Mapping) or "role" not in message:
            raise EvalDataError(f"{where}: conversation[{index}] must be an object with 'role' and 'content'")
    try:
        turns = turns_from_messages(messages)
    except ConversationError as error:
        raise EvalDataError(f"{where}: {error}") from None
    if not turns:
        raise EvalDataError(f"{where}: the conversation has no user or assistant message")
    return turns


def row_to_eval_row(row: Mapping[str, Any], where: str) -> EvalRow | str:
    """Turn one JSON row into an EvalRow, or return the reason it is skipped."""
    task = str(row.get("task") or "").strip().lower()
    if task == "refusal":
        return SKIP_REFUSAL
    label = str(row.get("label") or "").strip().lower()
    if label not in LABELS:
        return f"rows labeled {row.get('label')!r} (only safe/unsafe can be scored)"
    row_id = str(row.get("id", where))
    categories = ground_truth_categories(row)
    source = str(row.get("source") or "")

    if row.get("conversation") is not None:
        turns = _conversation_turns(row["conversation"], where)
        return EvalRow(row_id, label, role_of_last(turns), turns, categories, source)  # type: ignore[arg-type]

    prompt = row.get("prompt")
    if not isinstance(prompt, str):
        raise EvalDataError(f"{where}: 'prompt' must be text (or give a 'conversation')")
    if task == "prompt":
        turns = (Turn("user", prompt),)
        return EvalRow(row_id, label, "User", turns, categories, source)  # type: ignore[arg-type]
    if task == "response":
        response = row.get("response")
        if not isinstance(response, str):
            return "response-task rows without a response"
        turns = (Turn("user", prompt), Turn("assistant", response))
        return EvalRow(row_id, label, "Agent", turns, categories, source)  # type: ignore[arg-type]
    raise EvalDataError(f"{where}: unknown task {row.get('task')!r} (expected prompt, response or refusal)")


def load_rows(path: str | Path, limit: int | None = None) -> LoadedRows:
    """Read a JSONL data set; skips refusal/unlabeled rows and raises EvalDataError when nothing is left."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").split("\n")  # not splitlines(): U+2028 may sit in text
    except (OSError, UnicodeDecodeError) as error:
        raise EvalDataError(f"{path}: cannot read: {error}") from None
    loaded = LoadedRows(str(path), [])
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            data = json.loads(line)
        except json.JSONDecodeError as error:
            raise EvalDataError(f"{where}: not valid JSON: {error.msg}") from None
        if not isinstance(data, dict):
            raise EvalDataError(f"{where}: each line must be a JSON object")
        result = row_to_eval_row(data, where)
        if isinstance(result, str):
            loaded.skipped[result] += 1
            continue
        loaded.rows.append(result)
        if limit is not None and len(loaded.rows) >= limit:
            break
    if not loaded.rows:
        if loaded.skipped.get(SKIP_REFUSAL) and len(loaded.skipped) == 1:
            raise EvalDataError(
                f"{path}: a refusal set ({loaded.skipped[SKIP_REFUSAL]} rows labeled compliance/refusal): "
                "guards answer safe/unsafe, so there is nothing to score; use a prompt or response set"
            )
        reasons = "; ".join(loaded.skipped_messages()) or "the file is empty"
        raise EvalDataError(f"{path}: no rows with a safe/unsafe label to evaluate ({reasons})")
    return loaded
