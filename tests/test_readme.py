"""README's embedding snippet runs as written, from an app folder that has its own graph.py and nodes.py."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MARKER = "<!-- embedding-snippet:"


def embedding_snippet() -> str:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    after = readme[readme.index(MARKER) :]
    return after.split("```python\n", 1)[1].split("```", 1)[0]


@pytest.mark.slow
def test_readme_embedding_snippet_runs_next_to_an_apps_own_graph_and_nodes(tmp_path: Path) -> None:
    # The modules a LangGraph app typically has; importing them instead of guardgraph's would fail loudly.
    (tmp_path / "graph.py").write_text("raise ImportError('the app\\'s own graph.py was imported')\n")
    (tmp_path / "nodes.py").write_text("raise ImportError('the app\\'s own nodes.py was imported')\n")
    (tmp_path / "app.py").write_text(embedding_snippet())
    result = subprocess.run(
        [sys.executable, "app.py"], cwd=tmp_path, capture_output=True, text=True, timeout=600, env=None
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert lines[0].endswith("False ['safe', 'safe']")  # answered, both guards passed
    assert lines[1] == "I can't share financial information about Amazon. True"  # the run's own policy
