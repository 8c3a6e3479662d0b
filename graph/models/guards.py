"""The guard backends a config can select, registered in one place, and the guard built from them.

``--guard-backend NAME`` (``GUARDGRAPH_GUARD_BACKEND``) picks one of :data:`GUARD_BACKENDS`; without it,
``--guard-endpoint`` means ``openai``, ``--guard-model`` alone means ``transformers``, neither means
``offline``. A new backend is a ``CompletionBackend`` (or a ``Guard``) plus one entry here.

- ``offline``: the small CPU guard shipped with guardgraph (no model files to fetch, no network); with
  ``--guard-model DIR``, the offline guard of another artifact folder (``guardgraph.nodes.training.train --out``).
- ``transformers``: Llama Guard weights from a hub id or a local folder (``--guard-model``).
- ``openai``: an OpenAI-compatible ``/v1/completions`` server (vLLM, llama.cpp, TGI) at
  ``--guard-endpoint``, serving ``--guard-model``.
- ``ollama``: an Ollama server (``--guard-endpoint``, default ``http://localhost:11434``) running
  ``--guard-model`` (e.g. ``llama-guard3``), through LangChain's ``OllamaLLM``. The rendered prompt goes
  to ``/api/generate`` raw: Ollama's own template for Llama Guard lists fixed categories, so a chat call
  would drop the policy. Needs ``pip install 'guardgraph[ollama]'``.

Every guard goes through the same combinators (:func:`enforce_policy`), innermost first: the policy's
thresholds applied to each verdict (``guardgraph.nodes.guards.thresholds``); with
``guard_batch_window_ms`` > 0, concurrent checks sharing batched calls (``guardgraph.nodes.guards.batching``);
long text checked in windows (``guardgraph.nodes.guards.windowed``); and the policy's example-defined
categories merged into the verdict (``guardgraph.nodes.guards.examples``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from guardgraph.graph.config import GuardGraphConfig
from guardgraph.nodes.guards.base import Guard
from guardgraph.nodes.guards.batching import BatchingGuard
from guardgraph.nodes.guards.examples import ExampleGuard, with_examples
from guardgraph.nodes.guards.llama_guard.guard import CompletionBackend, LlamaGuard
from guardgraph.nodes.guards.thresholds import with_thresholds
from guardgraph.nodes.guards.windowed import windowed
from guardgraph.policies.model import Policy

OLLAMA_URL = "http://localhost:11434"


class ModelSetupError(RuntimeError):
    """A model could not be built from the given options; the message says what to pass instead."""


def offline_guard(config: GuardGraphConfig, policy: Policy) -> Guard:
    """The small guard shipped with guardgraph (runs on CPU, no network), or that of the artifact folder
    ``--guard-model`` names."""
    try:
        from guardgraph.nodes.guards.offline.guard import OfflineGuard
    except ImportError as error:
        raise ModelSetupError(
            "the offline default guard is not available: pass --guard-model (a Llama Guard hub id or local "
            "path) or --guard-endpoint URL --guard-model NAME"
        ) from error
    if not config.guard_model:
        return OfflineGuard.load_default()
    artifact = Path(config.guard_model)
    lacking = [name for name in ("config.json", "weights.safetensors") if not (artifact / name).is_file()]
    if lacking:
        raise ModelSetupError(
            f"--guard-model {artifact}: not an offline guard artifact (no {' or '.join(lacking)} in it)"
        )
    return OfflineGuard(artifact)


def transformers_guard(config: GuardGraphConfig, policy: Policy) -> Guard:
    from guardgraph.nodes.guards.llama_guard.transformers_backend import TransformersBackend

    return llama_guard(TransformersBackend.from_pretrained(required_model(config, "transformers")), config, policy)


def openai_guard(config: GuardGraphConfig, policy: Policy) -> Guard:
    from guardgraph.nodes.guards.llama_guard.openai_backend import OpenAICompletionBackend

    if not config.guard_endpoint:
        raise ModelSetupError("--guard-backend openai needs --guard-endpoint URL (the server's /v1 base URL)")
    backend = OpenAICompletionBackend(
        config.guard_endpoint, required_model(config, "openai"), config.api_key, timeout_s=config.guard_timeout_s
    )
    return llama_guard(backend, config, policy)


def ollama_guard(config: GuardGraphConfig, policy: Policy) -> Guard:
    try:
        from langchain_ollama import OllamaLLM
    except ImportError as error:
        raise ModelSetupError(
            "--guard-backend ollama needs langchain-ollama: pip install 'guardgraph[ollama]'"
        ) from error
    from guardgraph.nodes.guards.llama_guard.langchain_backend import LangChainBackend

    model = required_model(config, "ollama")
    llm = OllamaLLM(
        model=model,
        base_url=config.guard_endpoint or OLLAMA_URL,
        temperature=0,
        num_predict=20,
        sync_client_kwargs={"timeout": config.guard_timeout_s},
    )
    return llama_guard(LangChainBackend(llm, f"ollama:{model}", call_kwargs={"raw": True}, bos="strip"), config, policy)


GuardFactory = Callable[[GuardGraphConfig, Policy], Guard]
GUARD_BACKENDS: dict[str, GuardFactory] = {
    "offline": offline_guard,
    "transformers": transformers_guard,
    "openai": openai_guard,
    "ollama": ollama_guard,
}


def backend_name(config: GuardGraphConfig) -> str:
    """The backend the config selects, explicitly or by the options it gives."""
    if config.guard_backend:
        return config.guard_backend
    if config.guard_endpoint:
        return "openai"
    return "transformers" if config.guard_model else "offline"


def build_guard(config: GuardGraphConfig, policy: Policy) -> Guard:
    """The guard the config selects, through the combinators every guard goes through."""
    config.resolved_guard_format(policy)  # an unknown --guard-format is an error for every backend
    name = backend_name(config)
    factory = GUARD_BACKENDS.get(name)
    if factory is None:
        raise ModelSetupError(f"--guard-backend {name}: use one of {', '.join(GUARD_BACKENDS)}")
    guard = enforce_policy(factory(config, policy), config.guard_batch_window_ms)
    if isinstance(guard, ExampleGuard):
        guard.prepare(policy)  # the encoder loads with the other models, not at the first check
    return guard


def enforce_policy(guard: Guard, batch_window_ms: float = 0.0) -> Guard:
    """``guard`` with the policy's thresholds, batching (``batch_window_ms`` > 0), windows for long text and
    the policy's example-defined categories; a guard already wrapped is returned as it is."""
    if isinstance(guard, ExampleGuard):
        return guard
    guard = with_thresholds(guard)
    if batch_window_ms > 0:
        guard = BatchingGuard(guard, max_wait_ms=batch_window_ms)
    return with_examples(windowed(guard))


def llama_guard(backend: CompletionBackend, config: GuardGraphConfig, policy: Policy) -> Guard:
    """Llama Guard over ``backend``, in the format the config or the policy asks for."""
    return LlamaGuard(backend, config.resolved_guard_format(policy), config.descriptions)


def required_model(config: GuardGraphConfig, backend: str) -> str:
    if not config.guard_model:
        raise ModelSetupError(f"--guard-backend {backend} needs --guard-model NAME (the model it serves)")
    return config.guard_model
