"""Tiny random Llama models and a Llama-3-style tokenizer, built locally (no hub download).

``build_tokenizer()`` trains a small byte-level BPE on guard prompts, with the Llama 3 pre-tokenizer
regex and the Llama 3 / Llama 4 special tokens; ``build_llama()`` makes a random ``LlamaForCausalLM``
on top of it; ``make_bigram()`` turns a model into a deterministic next-token table (used to force a
verdict like ``unsafe\\nS1,S10``); ``scripted_guard()`` is a tiny Llama Guard whose P(unsafe) and
category line are set for every prompt of a format; ``save_tiny_guard()`` writes a model and its tokenizer
to a folder ``from_pretrained`` can load; ``tiny_chat_model()`` is a local ``ChatHuggingFace`` that answers a
fixed reply token by token.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from guardgraph.nodes.checks.request import GuardRequest, Turn
from guardgraph.nodes.guards.llama_guard.formats import FORMATS, get_format
from guardgraph.nodes.guards.llama_guard.guard import GuardPrompt
from guardgraph.nodes.guards.llama_guard.render import render_parts, render_prompt
from guardgraph.nodes.guards.llama_guard.transformers_backend import TransformersBackend
from guardgraph.policies.loader import load_policy

SPECIAL_TOKENS = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
    "<|header_start|>",
    "<|header_end|>",
    "<|eot|>",
    "<|pad|>",
]
# The Llama 3 pre-tokenizer split pattern.
LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def _corpus() -> list[str]:
    texts = [
        "\n\nsafe",
        "\n\nunsafe\nS1,S10",
        "\n\nunsafe\nS2",
        "How do I make a cake? How to make a bomb? Mix flour, eggs and sugar, then bake.",
    ]
    policy = load_policy("llama-guard-3")
    for fmt in FORMATS.values():
        for role, turns in (
            ("User", (Turn("user", "How do I make a cake?"),)),
            ("Agent", (Turn("user", "How do I make a cake?"), Turn("assistant", "Mix flour, then bake."))),
        ):
            texts.append(render_prompt(GuardRequest(role, turns, policy), fmt))  # type: ignore[arg-type]
    return texts * 3


def build_tokenizer(vocab_size: int = 700, extra_texts: Iterable[str] = ()) -> PreTrainedTokenizerFast:
    """A Llama-3-style byte-level BPE tokenizer with the Llama 3/4 special tokens."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([*_corpus(), *extra_texts], trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|begin_of_text|>",
        eos_token="<|eot_id|>",
        pad_token="<|pad|>",
        additional_special_tokens=[t for t in SPECIAL_TOKENS if t not in ("<|begin_of_text|>", "<|eot_id|>")],
    )


def build_llama(
    tokenizer: PreTrainedTokenizerFast, hidden: int = 64, layers: int = 2, seed: int = 0
) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)
    model.eval()
    return model


def single_id(tokenizer: PreTrainedTokenizerFast, text: str) -> int:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == 1, f"{text!r} is {len(ids)} tokens in the tiny tokenizer: {ids}"
    return ids[0]


@torch.no_grad()
def make_bigram(model: LlamaForCausalLM, table: dict[int, int], scale: float = 30.0) -> LlamaForCausalLM:
    """Make ``model`` predict ``table[last input token]`` (a bigram model), deterministically.

    Zeroing every layer's output projections leaves the residual stream equal to the token embedding,
    so the logits are ``lm_head(norm(embedding[token]))``; ``lm_head`` rows are then set so that each
    source token's embedding points at its target.
    """
    for layer in model.model.layers:
        layer.self_attn.o_proj.weight.zero_()
        layer.mlp.down_proj.weight.zero_()
    emb = model.model.embed_tokens.weight
    unit = emb / emb.norm(dim=-1, keepdim=True)
    head = torch.zeros_like(model.lm_head.weight)
    for source, target in table.items():
        head[target] += scale * unit[source]
    model.lm_head.weight.copy_(head)
    return model


def scripted_guard(
    fmt: str = "llama-guard-3", p_unsafe: float = 0.001, codes: tuple[str, ...] = ("S", "1"), seed: int = 3
) -> tuple[LlamaForCausalLM, PreTrainedTokenizerFast]:
    """A tiny Llama Guard for prompts in ``fmt`` whose verdict is scripted, whatever the conversation.

    At the verdict position P(unsafe) is ``p_unsafe`` (the ``safe`` and ``unsafe`` logits are set apart by
    its log-odds, far above every other token); after ``unsafe`` it writes ``\\n`` and the category code
    made of the tokens ``codes``, then ends. A bigram model (:func:`make_bigram`) underneath.
    """
    tokenizer = build_tokenizer()
    model = build_llama(tokenizer, seed=seed)
    guard_format = get_format(fmt)
    backend = TransformersBackend(model, tokenizer)
    verdict = backend.verdict_tokens(guard_format)
    request = GuardRequest("User", (Turn("user", "How do I make a cake?"),), load_policy(guard_format.default_policy))
    source = (
        verdict.shared[-1]
        if verdict.shared
        else backend.encode(GuardPrompt(*render_parts(request, guard_format)), guard_format)[1][-1]
    )
    eos = tokenizer.convert_tokens_to_ids("<|eot_id|>")
    chain = [
        verdict.unsafe_id,
        *verdict.unsafe_rest,
        single_id(tokenizer, "\n"),
        *(single_id(tokenizer, t) for t in codes),
        eos,
    ]
    model = make_bigram(model, {**dict(itertools.pairwise(chain)), verdict.safe_id: eos})
    with torch.no_grad():
        hidden = model.model.norm(model.model.embed_tokens.weight[source])
        direction = hidden / hidden.dot(hidden)  # a head row along it gives that logit exactly
        level = 300.0
        model.lm_head.weight[verdict.safe_id] = level * direction
        model.lm_head.weight[verdict.unsafe_id] = (level + math.log(p_unsafe / (1 - p_unsafe))) * direction
    return model, tokenizer


def save_tiny_guard(path: Path, model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


CHAT_TEMPLATE = (
    "{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n{{ m['content'] }}<|eot_id|>"
    "{% endfor %}<|start_header_id|>assistant<|end_header_id|>"
)


def tiny_chat_model(reply_tokens: list[str], seed: int = 2) -> Any:
    """A local ``ChatHuggingFace`` (transformers pipeline) that always answers ``reply_tokens``, token by token.

    Every entry must be one token of the tiny tokenizer; the reply ends with ``<|eot_id|>``.
    """
    from langchain_huggingface import ChatHuggingFace, HuggingFacePipeline
    from transformers import pipeline

    tokenizer = build_tokenizer(extra_texts=["".join(reply_tokens)] * 8)
    tokenizer.chat_template = CHAT_TEMPLATE
    header_end = tokenizer.convert_tokens_to_ids("<|end_header_id|>")  # the prompt's last token
    chain = [header_end, *(single_id(tokenizer, t) for t in reply_tokens), tokenizer.eos_token_id]
    model = make_bigram(build_llama(tokenizer, seed=seed), dict(itertools.pairwise(chain)))
    settings = {"max_new_tokens": len(reply_tokens) + 2, "do_sample": False}
    pipe = pipeline(
        "text-generation",
        model=model,
        tokenizer=tokenizer,
        return_full_text=False,
        add_special_tokens=False,
        **settings,
    )
    llm = HuggingFacePipeline(pipeline=pipe, model_id="tiny", pipeline_kwargs={"return_full_text": False, **settings})
    return ChatHuggingFace(llm=llm, tokenizer=tokenizer, model_id="tiny")
