"""Llama Guard run through transformers directly: token-prefix KV cache, single-pass verdict, batching.

``TransformersBackend`` implements ``CompletionBackend`` (see ``guardgraph.nodes.guards.llama_guard.guard``):

- **Tokenization.** The rendered prompt is tokenized with ``add_special_tokens=False`` (the template
  already starts with BOS). Template pieces keep their special tokens; message text is tokenized with
  ``split_special_tokens=True`` so a user typing ``<|eot_id|>`` gets plain-text ids, never the
  special id. The prefix (policy block) is tokenized on its own, then the conversation, then the
  template tail (from its first special token).
- **Token-prefix KV cache** (``kv_cache.py``). Each check looks up the cached token sequence sharing
  the longest prefix of token ids with its prompt (the policy block, the conversation, the reply up to
  the previous chunk) and runs only the tokens after it, on top of a per-call view of the cached keys
  and values (the stored tensors are never written to). Afterwards it keeps its own keys and values up
  to the end of the conversation (``GuardPrompt.stable_chars``), so the next chunk of a streamed reply
  pays its new tokens and the template tail. Memory is bounded (LRU by bytes, ``cache_bytes``, default
  :data:`DEFAULT_MAX_BYTES`). ``reuse="policy"`` keeps only the policy block (every check re-reads the
  conversation): the baseline the bench compares against. ``warm()`` computes a prompt's beginning
  ahead of time (the conversation before a reply exists).
- **Single-pass verdict.** ``fmt.verdict_lead`` (``\\n\\n`` for Llama Guard 3/4) and any first pieces
  shared by ``safe`` and ``unsafe`` are appended to the suffix; one forward pass reads the logits of the
  first differing ``safe``/``unsafe`` tokens at the last position; P(unsafe) is the softmax over those
  two. Only when P(unsafe) reaches the prompt's threshold (the policy's lowest) does the backend greedily
  generate the category line (at most ``max_new_tokens``), continuing from the same cache; the policy's
  thresholds are applied to the verdict afterwards, as for every guard (``nodes/guards/thresholds.py``).
- **Batching.** ``complete()`` runs prompts that reuse the same cached entry as one batch: the remaining
  tokens are padded on the left *between* the cached part and them (masked out, position ids continue
  from the cached part), so every row's verdict position is the last column.
- ``mode="naive"`` is the baseline: full prompt, no cache, ``model.generate`` of the whole verdict.
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

from guardgraph.nodes.guards.llama_guard.formats import GuardFormat
from guardgraph.nodes.guards.llama_guard.guard import Completion, GuardPrompt
from guardgraph.nodes.guards.llama_guard.kv_cache import (
    DEFAULT_MAX_BYTES,
    CachedTokens,
    Match,
    TokenPrefixCache,
    cache_view,
    row_cache,
    shared_length,
)

Mode = Literal["optimized", "naive"]
Reuse = Literal["tokens", "policy"]


@dataclass(frozen=True)
class VerdictTokens:
    """Token ids of the verdict for one format and tokenizer.

    ``shared`` are appended after the suffix (the lead and any pieces ``safe``/``unsafe`` share); the
    verdict position is the last of them; ``safe_id``/``unsafe_id`` are the first differing tokens;
    ``unsafe_rest`` are the tokens that finish the word ``unsafe`` after ``unsafe_id``.
    """

    lead_len: int
    shared: tuple[int, ...]
    safe_id: int
    unsafe_id: int
    unsafe_rest: tuple[int, ...]


@dataclass(frozen=True)
class _Row:
    """One prompt as the model reads it: ``ids`` (prefix, suffix, verdict lead), the policy prefix's length,
    and how many leading ids later prompts of the same conversation are expected to share (``keep``)."""

    ids: list[int]
    prefix_len: int
    keep: int


@dataclass
class _Pass:
    """One forward pass over ``rows`` (indices into the caller's list) on top of a cached entry."""

    rows: list[int]
    logits: torch.Tensor  # [len(rows), V] at the last position
    cache: Any
    mask: torch.Tensor
    next_pos: torch.Tensor


def kv_cache_argument(model: Any) -> str:
    """The name ``model.forward`` takes its KV cache under: ``cache`` (transformers 5.24+), else ``past_key_values``."""
    try:
        parameters = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return "past_key_values"
    return "cache" if "cache" in parameters else "past_key_values"


def _returned_cache(output: Any) -> Any:
    """The KV cache a forward pass returned, under either name."""
    cache = getattr(output, "cache", None)
    return cache if cache is not None else output.past_key_values


class TransformersBackend:
    """Llama Guard (any version) on a loaded transformers causal LM and its tokenizer."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        name: str | None = None,
        mode: Mode = "optimized",
        cache_bytes: int = DEFAULT_MAX_BYTES,
        reuse: Reuse = "tokens",
        max_new_tokens: int = 20,
        max_batch_size: int = 16,
        naive_max_new_tokens: int | None = None,
    ) -> None:
        if mode not in ("optimized", "naive"):
            raise ValueError(f"mode must be 'optimized' or 'naive', got {mode!r}")
        if reuse not in ("tokens", "policy"):
            raise ValueError(f"reuse must be 'tokens' or 'policy', got {reuse!r}")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.name = name or getattr(getattr(model, "config", None), "_name_or_path", None) or type(model).__name__
        self.mode = mode
        self.reuse = reuse
        self.cache = TokenPrefixCache(cache_bytes)
        self.max_new_tokens = max_new_tokens
        self.max_batch_size = max(1, max_batch_size)
        self.naive_max_new_tokens = naive_max_new_tokens
        self._verdict_tokens: dict[str, VerdictTokens] = {}
        self._lock = threading.RLock()
        self.stats = {
            "prefix_misses": 0,  # policy prefixes computed
            "reused_tokens": 0,  # prompt tokens read from the cache
            "forward_tokens": 0,  # tokens run through the model (padding included)
            "generated_tokens": 0,
        }
        special = getattr(tokenizer, "all_special_tokens", None) or []
        added = getattr(tokenizer, "added_tokens_encoder", None) or {}
        self._special_strings = tuple(sorted({*special, *added}, key=len, reverse=True))
        self._stop_ids = self._collect_stop_ids()
        self._cache_argument = kv_cache_argument(self.model)

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(
        cls,
        model_id_or_path: str,
        device: str | torch.device | None = None,
        dtype: torch.dtype | str | None = None,
        **kwargs: Any,
    ) -> TransformersBackend:
        """Load a hub id or a local folder.

        Llama Guard 1-3 are ``*ForCausalLM`` with a tokenizer. Llama Guard 4 is
        ``Llama4ForConditionalGeneration`` with a processor: it is loaded through
        ``AutoModelForImageTextToText`` and the processor's tokenizer (text-only checks).
        """
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        if isinstance(dtype, str):
            dtype = getattr(torch, dtype)
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if dtype is None:
            dtype = torch.bfloat16 if str(device).startswith("cuda") else torch.float32
        config = AutoConfig.from_pretrained(model_id_or_path)
        architectures = getattr(config, "architectures", None) or []
        multimodal = getattr(config, "model_type", "") == "llama4" or any(
            a.endswith("ForConditionalGeneration") for a in architectures
        )
        if multimodal:
            from transformers import AutoModelForImageTextToText, AutoProcessor

            model = AutoModelForImageTextToText.from_pretrained(model_id_or_path, dtype=dtype)
            processor = AutoProcessor.from_pretrained(model_id_or_path)
            tokenizer = getattr(processor, "tokenizer", processor)
        else:
            model = AutoModelForCausalLM.from_pretrained(model_id_or_path, dtype=dtype)
            tokenizer = AutoTokenizer.from_pretrained(model_id_or_path)
        model.to(device)  # type: ignore[arg-type]
        kwargs.setdefault("name", str(model_id_or_path))
        return cls(model, tokenizer, **kwargs)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _collect_stop_ids(self) -> set[int]:
        ids: set[int] = set()
        eos = getattr(self.tokenizer, "eos_token_id", None)
        if isinstance(eos, int):
            ids.add(eos)
        gen_eos = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        for value in gen_eos if isinstance(gen_eos, list) else [gen_eos]:
            if isinstance(value, int):
                ids.add(value)
        vocab = self.tokenizer.get_vocab() if hasattr(self.tokenizer, "get_vocab") else {}
        for marker in ("<|eot_id|>", "<|eot|>", "<|end_of_text|>", "</s>", "<|eom_id|>"):
            if marker in vocab:
                ids.add(vocab[marker])
        return ids

    # ------------------------------------------------------------- tokenization
    def _ids(self, text: str, template: bool) -> list[int]:
        """Template text keeps its special tokens; message text never produces a special id."""
        if not text:
            return []
        with self._lock:
            return list(self.tokenizer(text, add_special_tokens=False, split_special_tokens=not template)["input_ids"])

    def _template_tail_start(self, suffix: str, fmt: GuardFormat) -> int:
        """Where the template's closing special tokens begin in ``suffix`` (``len(suffix)`` if none)."""
        if fmt.suffix and suffix.endswith(fmt.suffix):
            base = len(suffix) - len(fmt.suffix)
            hits = [fmt.suffix.find(s) for s in self._special_strings if s and s in fmt.suffix]
            if hits:
                return base + min(hits)
        return len(suffix)

    def encode(self, prompt: GuardPrompt, fmt: GuardFormat) -> tuple[list[int], list[int]]:
        """(prefix ids, suffix ids) of a rendered prompt, without the verdict lead."""
        tail = self._template_tail_start(prompt.suffix, fmt)
        suffix_ids = self._ids(prompt.suffix[:tail], template=False) + self._ids(prompt.suffix[tail:], template=True)
        return self._ids(prompt.prefix, template=True), suffix_ids

    def verdict_tokens(self, fmt: GuardFormat) -> VerdictTokens:
        """The verdict token ids for ``fmt`` in this tokenizer (cached)."""
        cached = self._verdict_tokens.get(fmt.verdict_lead)
        if cached is not None:
            return cached
        lead = self._ids(fmt.verdict_lead, template=True)

        def word(text: str) -> list[int]:
            full = self._ids(fmt.verdict_lead + text, template=True)
            return full[len(lead) :] if full[: len(lead)] == lead else self._ids(text, template=True)

        safe, unsafe = word("safe"), word("unsafe")
        d = 0
        while d < min(len(safe), len(unsafe)) and safe[d] == unsafe[d]:
            d += 1
        if d >= len(safe) or d >= len(unsafe):
            raise ValueError("the tokenizer cannot tell 'safe' from 'unsafe' by one token")
        tokens = VerdictTokens(len(lead), tuple(lead + safe[:d]), safe[d], unsafe[d], tuple(unsafe[d + 1 :]))
        self._verdict_tokens[fmt.verdict_lead] = tokens
        return tokens

    def encode_rows(self, prompts: Sequence[GuardPrompt], fmt: GuardFormat) -> list[_Row]:
        """What the model reads for each prompt (with the verdict lead) and how much of it to keep."""
        lead = list(self.verdict_tokens(fmt).shared)
        rows = []
        for prompt in prompts:
            prefix_ids, suffix_ids = self.encode(prompt, fmt)
            ids = prefix_ids + suffix_ids + lead
            keep = len(ids)
            if prompt.stable_chars is not None and self.mode == "optimized" and self.reuse == "tokens":
                stable = prefix_ids + self._ids(prompt.suffix[: prompt.stable_chars], template=False)
                # less the last token, which the text that follows may merge with ("." + "\n\n" -> ".\n\n")
                keep = max(len(prefix_ids), shared_length(stable, ids) - 1)
            rows.append(_Row(ids, len(prefix_ids), keep))
        return rows

    # -------------------------------------------------------------- KV cache
    def clear_cache(self) -> None:
        self.cache.clear()

    @torch.no_grad()
    def _policy_prefix(self, ids: list[int]) -> CachedTokens:
        """The keys and values of a policy prefix, computed and kept (the start of every prompt of a role)."""
        self.stats["prefix_misses"] += 1
        out = self.model(input_ids=torch.tensor([ids], device=self.device), use_cache=True, logits_to_keep=1)
        self.stats["forward_tokens"] += len(ids)
        return self.cache.add(ids, _returned_cache(out))

    def _bases(self, rows: list[_Row]) -> list[Match]:
        """For each row, the cached entry it continues and how many of its ids that entry holds."""
        bases: list[Match | None] = [self.cache.longest(row.ids) for row in rows]
        computed: dict[tuple[int, ...], CachedTokens] = {}
        for i, row in enumerate(rows):
            base = bases[i]
            if base is None or base.length < row.prefix_len:
                prefix = tuple(row.ids[: row.prefix_len])
                if prefix not in computed:
                    computed[prefix] = self._policy_prefix(list(prefix))
                bases[i] = Match(computed[prefix], row.prefix_len)
        return [base for base in bases if base is not None]

    @torch.no_grad()
    def _passes(self, rows: list[_Row], use_cache: bool = True) -> list[_Pass]:
        """Run every row on top of its cached entry, rows sharing an entry batched; keep what later checks reuse."""
        bases = self._bases(rows)
        groups: dict[int, list[int]] = {}
        for i, base in enumerate(bases):
            groups.setdefault(id(base.entry), []).append(i)
        passes = []
        for members in groups.values():
            members.sort(key=lambda i: len(rows[i].ids) - bases[i].length)  # similar lengths keep padding small
            for start in range(0, len(members), self.max_batch_size):
                batch = members[start : start + self.max_batch_size]
                entry = bases[batch[0]].entry
                # the part every row of the batch shares with the entry, leaving each row a token to run
                past = min(min(bases[i].length for i in batch), min(len(rows[i].ids) for i in batch) - 1)
                if past < len(entry) and not entry.croppable:
                    raise RuntimeError("a cached entry that cannot be cropped was matched in part")
                passes.append(self._forward(entry, past, batch, rows, use_cache))
        return passes

    @torch.no_grad()
    def _forward(
        self, entry: CachedTokens | None, past: int, batch: list[int], rows: list[_Row], use_cache: bool
    ) -> _Pass:
        """Run ``rows[batch]`` after their first ``past`` ids (read from ``entry``); left-pad between the two.

        With ``entry=None`` (and ``past=0``) the rows are read whole, without a cache.
        """
        tails = [rows[i].ids[past:] for i in batch]
        size, width = len(tails), max(len(t) for t in tails)
        pad_id = self.tokenizer.pad_token_id
        if pad_id is None:
            pad_id = 0
        ids = torch.full((size, width), pad_id, dtype=torch.long)
        mask = torch.zeros((size, past + width), dtype=torch.long)
        mask[:, :past] = 1
        positions = torch.full((size, width), past, dtype=torch.long)
        pads = []
        for r, tail in enumerate(tails):
            pad = width - len(tail)
            pads.append(pad)
            ids[r, pad:] = torch.tensor(tail)
            mask[r, past + pad :] = 1
            positions[r, pad:] = torch.arange(past, past + len(tail))
        device = self.device
        ids, mask, positions = ids.to(device), mask.to(device), positions.to(device)
        kwargs: dict[str, Any] = {}
        if entry is not None:
            kwargs[self._cache_argument] = cache_view(entry.kv, past, size)
            self.stats["reused_tokens"] += past * size
        out = self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            use_cache=use_cache,
            logits_to_keep=1,
            **kwargs,
        )
        self.stats["forward_tokens"] += size * width
        cache = _returned_cache(out) if use_cache else None
        if cache is not None and entry is not None and entry.croppable and self.reuse == "tokens":
            for r, i in enumerate(batch):
                keep = rows[i].keep
                if keep > past and shared_length(entry.ids, rows[i].ids[:keep]) < keep:
                    pad = pads[r]  # the row's positions: its first ``past`` ids, ``pad`` masked ones, the rest
                    spans = [(0, keep)] if pad == 0 else [(0, past), (past + pad, pad + keep)]
                    self.cache.add(rows[i].ids[:keep], row_cache(cache, r, [(a, b) for a, b in spans if b > a]))
        return _Pass(batch, out.logits[:, -1, :].float(), cache, mask, positions[:, -1] + 1)

    def verdict_logits(self, prompts: Sequence[GuardPrompt], fmt: GuardFormat, cached: bool = True) -> torch.Tensor:
        """Last-position logits [B, V] at the verdict position (for tests and diagnostics).

        ``cached=False`` reads every prompt whole, without the cache.
        """
        rows = self.encode_rows(prompts, fmt)
        with self._lock:
            if not cached:
                return self._forward(None, 0, list(range(len(rows))), rows, use_cache=False).logits
            result: list[torch.Tensor | None] = [None] * len(rows)
            for run in self._passes(rows):
                for r, i in enumerate(run.rows):
                    result[i] = run.logits[r]
        return torch.stack([r for r in result if r is not None])

    def warm(self, prompt: GuardPrompt, fmt: GuardFormat) -> None:
        """Compute and keep the keys and values of ``prompt`` (a prompt's beginning, no template tail), so the
        complete prompts that start with it run only the rest. Does nothing when they would not be kept."""
        if self.mode == "naive" or self.reuse != "tokens":
            return
        prefix_ids = self._ids(prompt.prefix, template=True)
        ids = prefix_ids + self._ids(prompt.suffix, template=False)
        with self._lock:
            found = self.cache.longest(ids)
            if len(ids) > len(prefix_ids) and (found is None or found.length < len(ids)):
                self._passes([_Row(ids, len(prefix_ids), len(ids))])

    def _p_unsafe(self, logits: torch.Tensor, tokens: VerdictTokens) -> torch.Tensor:
        pair = torch.stack([logits[:, tokens.safe_id], logits[:, tokens.unsafe_id]], dim=-1)
        return torch.softmax(pair, dim=-1)[:, 1]

    @torch.no_grad()
    def _generate_codes(
        self, cache: Any, mask: torch.Tensor, next_pos: torch.Tensor, rows: list[int], tokens: VerdictTokens
    ) -> list[str]:
        """Greedy-generate the text after ``unsafe`` for ``rows`` of the batch, from the cache."""
        device = self.device
        index = torch.tensor(rows, device=device)
        cache.batch_select_indices(index)
        mask = mask[index]
        pos = next_pos[index].clone()
        feed = torch.tensor([[tokens.unsafe_id, *tokens.unsafe_rest]] * len(rows), device=device)
        generated: list[list[int]] = [[] for _ in rows]
        done = [False] * len(rows)
        for _ in range(self.max_new_tokens):
            steps = feed.shape[1]
            mask = torch.cat([mask, torch.ones((len(rows), steps), dtype=mask.dtype, device=device)], dim=1)
            positions = pos[:, None] + torch.arange(steps, device=device)[None, :]
            out = self.model(
                input_ids=feed,
                attention_mask=mask,
                position_ids=positions,
                use_cache=True,
                logits_to_keep=1,
                **{self._cache_argument: cache},
            )
            cache = _returned_cache(out)
            pos = pos + steps
            nxt = out.logits[:, -1, :].argmax(dim=-1)
            self.stats["generated_tokens"] += len(rows)
            for i, token in enumerate(nxt.tolist()):
                if done[i]:
                    continue
                if token in self._stop_ids:
                    done[i] = True
                    continue
                generated[i].append(token)
                text = self.tokenizer.decode(generated[i], skip_special_tokens=False)
                if text.strip("\n") and "\n" in text.lstrip("\n"):
                    done[i] = True
            if all(done):
                break
            feed = nxt[:, None]
        texts = []
        for ids in generated:
            text = self.tokenizer.decode(ids, skip_special_tokens=False)
            head, _, _rest = text.lstrip("\n").partition("\n")
            texts.append(("\n" + head.strip()) if head.strip() else "")
        return texts

    @torch.no_grad()
    def _complete_optimized(self, prompts: list[GuardPrompt], rows: list[_Row], fmt: GuardFormat) -> list[Completion]:
        tokens = self.verdict_tokens(fmt)
        results: list[Completion | None] = [None] * len(prompts)
        for run in self._passes(rows):
            p_unsafe = self._p_unsafe(run.logits, tokens).tolist()
            unsafe = [r for r, (i, p) in enumerate(zip(run.rows, p_unsafe, strict=True)) if p >= prompts[i].threshold]
            texts = ["safe"] * len(run.rows)
            if unsafe:
                for r, tail in zip(
                    unsafe, self._generate_codes(run.cache, run.mask, run.next_pos, unsafe, tokens), strict=True
                ):
                    texts[r] = "unsafe" + tail
            for r, i in enumerate(run.rows):
                results[i] = Completion(texts[r], p_unsafe[r])
        return [r for r in results if r is not None]

    @torch.no_grad()
    def _complete_naive(self, prompts: list[GuardPrompt], encoded: list[_Row], fmt: GuardFormat) -> list[Completion]:
        """Baseline: the whole prompt each time, ``model.generate`` writes the verdict."""
        tokens = self.verdict_tokens(fmt)
        rows = [row.ids[: len(row.ids) - len(tokens.shared)] for row in encoded]
        width = max(len(r) for r in rows)
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, row in enumerate(rows):
            ids[i, width - len(row) :] = torch.tensor(row)
            mask[i, width - len(row) :] = 1
        max_new = self.naive_max_new_tokens or (tokens.lead_len + 2 + self.max_new_tokens)
        out = self.model.generate(
            input_ids=ids.to(self.device),
            attention_mask=mask.to(self.device),
            max_new_tokens=max_new,
            do_sample=False,
            output_scores=True,
            return_dict_in_generate=True,
            pad_token_id=pad_id,
            eos_token_id=sorted(self._stop_ids) or None,
        )
        self.stats["forward_tokens"] += ids.numel()
        self.stats["generated_tokens"] += (out.sequences.shape[1] - width) * len(rows)
        verdict_step = len(tokens.shared)
        p_unsafe: list[float | None] = [None] * len(rows)
        if len(out.scores) > verdict_step:
            probs = self._p_unsafe(out.scores[verdict_step].float(), tokens)
            p_unsafe = [float(p) for p in probs]
        completions = []
        for i in range(len(rows)):
            new = [t for t in out.sequences[i, width:].tolist() if t not in self._stop_ids and t != pad_id]
            text = self.tokenizer.decode(new, skip_special_tokens=False)
            completions.append(Completion(text.strip(), p_unsafe[i]))
        return completions

    # ------------------------------------------------------------------- API
    def complete(self, prompts: Sequence[GuardPrompt], fmt: GuardFormat) -> list[Completion]:
        if not prompts:
            return []
        rows = self.encode_rows(prompts, fmt)
        results: list[Completion] = []
        with self._lock:
            if self.mode == "naive":
                for start in range(0, len(prompts), self.max_batch_size):
                    chunk = slice(start, start + self.max_batch_size)
                    results.extend(self._complete_naive(list(prompts[chunk]), rows[chunk], fmt))
                return results
            return self._complete_optimized(list(prompts), rows, fmt)
