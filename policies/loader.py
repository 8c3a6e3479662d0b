"""Load policies from the bundled YAML files or a user's own file, all or nothing."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from guardgraph.policies.model import Policy

POLICY_DIR = Path(__file__).resolve().parent


class PolicyError(ValueError):
    """A policy file is missing or malformed; the message names the file and the field."""


def bundled_policy_names() -> list[str]:
    """Names of the policies shipped with guardgraph."""
    return sorted(path.stem for path in POLICY_DIR.glob("*.yaml"))


def resolve_policy_path(name_or_path: str | Path) -> Path:
    """A bundled policy name (``llama-guard-3``) or a path to a YAML file."""
    text = str(name_or_path)
    if text in bundled_policy_names():
        return POLICY_DIR / f"{text}.yaml"
    path = Path(text).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        raise PolicyError(f"{text}: is a directory, not a policy file")
    if path.suffix in {".yaml", ".yml"} or "/" in text:
        raise PolicyError(f"{text}: policy file not found")
    raise PolicyError(f"unknown policy {text!r}: use one of {', '.join(bundled_policy_names())} or a YAML path")


def _field_path(location: tuple[int | str, ...], data: Any) -> str:
    """Render a pydantic error location as ``categories[7].code (O7)``."""
    parts: list[str] = []
    node = data
    for item in location:
        if isinstance(item, int):
            label = f"[{item}]"
            if isinstance(node, list) and 0 <= item < len(node):
                node = node[item]
                if isinstance(node, dict) and "code" in node:
                    label += f" ({node['code']})"
            parts.append(label)
        else:
            parts.append(("." if parts else "") + item)
            node = node.get(item) if isinstance(node, dict) else None
    return "".join(parts) or "(top level)"


def policy_from_data(data: Any, source: str) -> Policy:
    """Validate already-parsed policy data; errors name ``source`` and the failing field."""
    if not isinstance(data, dict):
        raise PolicyError(f"{source}: a policy file must be a mapping with 'name' and 'categories'")
    try:
        return Policy.model_validate({**data, "source": source})
    except ValidationError as error:
        problems = "; ".join(f"{_field_path(tuple(issue['loc']), data)}: {issue['msg']}" for issue in error.errors())
        raise PolicyError(f"{source}: {problems}") from None


def load_policy(name_or_path: str | Path) -> Policy:
    """Load a bundled or user policy; raises PolicyError naming the file and the field.

    A file is read once per version (its modification time and size), so a policy named per run (the
    graph's ``Context.policy``) costs a ``stat`` after the first run, and an edited file is read again.
    """
    path = resolve_policy_path(name_or_path)
    try:
        stat = path.stat()
    except OSError as error:
        raise PolicyError(f"{path}: cannot read: {error.strerror or error}") from None
    return _load_file(path.resolve(), stat.st_mtime_ns, stat.st_size, path)


@functools.lru_cache(maxsize=64)
def _load_file(resolved: Path, mtime_ns: int, size: int, path: Path) -> Policy:
    """The policy file at the version (``mtime_ns``, ``size``) the caller saw; errors name ``path`` as given."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise PolicyError(f"{path}: not valid YAML: {error}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise PolicyError(f"{path}: cannot read: {error}") from None
    return policy_from_data(data, str(path))
