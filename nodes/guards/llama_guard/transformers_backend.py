"""Llama Guard run through transformers directly: prefix KV cache, single-pass verdict, batching.

``TransformersBackend`` implements ``CompletionBackend`` (see ``guardgraph.nodes.guards.llama_guard.guard``):

- **Tokenization.** The rendered prompt is tokenized with ``add_special_tokens=False`` (the template
  already starts with BOS). Template pieces keep their special tokens; message text is tokenized with
  ``split_special_tokens=True`` so a user typing ``<|eot_id|>`` gets plain-text ids, never the
  special id. The prefix (policy block) is tokenized on its own, then the conversation, then the
  template tail (from its first special token).
- **Prefix KV cache.** The prefix depends only on (format, policy, role); its keys and values are
  computed once and kept in an LRU keyed by the prefix text. Each call runs only the suffix tokens on
  top of a per-call shallow copy of the cache (the stored tensors are never written to).
- **Single-pass verdict.** ``fmt.verdict_lead`` (``\\n\\n`` for Llama Guard 3/4) and any first pieces
  shared by ``safe`` and ``unsafe`` are appended to the suffix; one forward pass reads the logits of the
  first differing ``safe``/``unsafe`` tokens at the last position; P(unsafe) is the softmax over those
  two. Only when P(unsafe) reaches the prompt's threshold (the policy's lowest) does the backend greedily
  generate the category line (at most ``max_new_tokens``), continuing from the same cache; the policy's
  thresholds are applied to the verdict afterwards, as for every guard (``nodes/guards/thresholds.py``).
- **Batching.** ``complete()`` groups prompts by prefix and runs each group as one batch: suffixes are
  padded on the left *between* the cached prefix and the suffix (masked out, position ids continue
  from the prefix), so every row's verdict position is the last column.
- ``mode="naive"`` is the baseline: full prompt, no cache, ``model.generate`` of the whole verdict.
"""

from __future__ import annotations

import copy
import inspect
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

from guardgraph.nodes.guards.llama_guard.formats import GuardFormat
from guardgraph.nodes.guards.llama_guard.guard import Completion, GuardPrompt

Mode = Literal["optimized", "naive"]


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


@dataclass
class _PrefixEntry:
    ids: list[int]
    kv: Any  # a transformers Cache holding the prefix keys and values (batch 1), never written to


@dataclass(frozen=True)
class _Encoded:
    prefix: str
    prefix_ids: list[int]
    suffix_ids: list[int]


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
        prefix_cache_size: int = 8,
        max_new_tokens: int = 20,
        max_batch_size: int = 16,
        naive_max_new_tokens: int | None = None,
    ) -> None:
        if mode not in ("optimized", "naive"):
            raise ValueError(f"mode must be 'optimized' or 'naive', got {mode!r}")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.name = name or getattr(getattr(model, "config", None), "_name_or_path", None) or type(model).__name__
        self.mode = mode
        self.prefix_cache_size = prefix_cache_size
        self.max_new_tokens = max_new_tokens
        self.max_batch_size = max(1, max_batch_size)
        self.naive_max_new_tokens = naive_max_new_tokens
        self._prefix_cache: OrderedDict[str, _PrefixEntry] = OrderedDict()
        self._verdict_tokens: dict[str, VerdictTokens] = {}
        self._lock = threading.RLock()
        self.stats = {"prefix_hits": 0, "prefix_misses": 0, "forward_tokens": 0, "generated_tokens": 0}
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

    # -------------------------------------------------------------- prefix cache
    def clear_prefix_cache(self) -> None:
        with self._lock:
            self._prefix_cache.clear()

    @torch.no_grad()
    def prefix_entry(self, prefix: str, prefix_ids: list[int]) -> _PrefixEntry:
        """The cached keys and values of ``prefix`` (LRU, keyed by the prefix text)."""
        with self._lock:
            entry = self._prefix_cache.get(prefix)
            if entry is not None:
                self._prefix_cache.move_to_end(prefix)
                self.stats["prefix_hits"] += 1
                return entry
            self.stats["prefix_misses"] += 1
            ids = torch.tensor([prefix_ids], device=self.device)
            out = self.model(input_ids=ids, use_cache=True, logits_to_keep=1)
            self.stats["forward_tokens"] += len(prefix_ids)
            entry = _PrefixEntry(prefix_ids, _returned_cache(out))
            self._prefix_cache[prefix] = entry
            while len(self._prefix_cache) > self.prefix_cache_size:
                self._prefix_cache.popitem(last=False)
            return entry

    @staticmethod
    def _fresh_cache(entry: _PrefixEntry, batch: int) -> Any:
        """A cache for ``batch`` rows over the stored prefix, leaving the stored tensors untouched.

        Plain ``DynamicLayer``s grow by ``torch.cat`` (new tensors), so a shallow copy whose layers
        point at (expanded views of) the stored tensors is safe; other layer types get a deep copy.
        """
        from transformers.cache_utils import DynamicLayer

        stored = entry.kv
        layers = getattr(stored, "layers", None)
        if layers is not None and all(type(layer) is DynamicLayer for layer in layers):
            cache = copy.copy(stored)
            cache.layers = []
            for layer in layers:
                clone = copy.copy(layer)
                if batch > 1 and getattr(layer, "keys", None) is not None:
                    clone.keys = layer.keys.expand(batch, *layer.keys.shape[1:])
                    clone.values = layer.values.expand(batch, *layer.values.shape[1:])
                cache.layers.append(clone)
            return cache
        cache = copy.deepcopy(stored)
        if batch > 1:
            cache.batch_repeat_interleave(batch)
        return cache

    # ----------------------------------------------------------------- scoring
    @torch.no_grad()
    def _forward_suffixes(
        self, entry: _PrefixEntry | None, rows: list[list[int]], use_cache: bool = True
    ) -> tuple[torch.Tensor, Any, torch.Tensor, torch.Tensor]:
        """Run ``rows`` (suffix + verdict lead) on top of the prefix; left-pad between prefix and suffix.

        Returns (last-position logits [B, V], cache, attention mask, next position ids [B]).
        With ``entry=None`` the rows are full prompts (no cache).
        """
        batch = len(rows)
        width = max(len(r) for r in rows)
        pad_id = self.tokenizer.pad_token_id
        if pad_id is None:
            pad_id = 0
        past = 0 if entry is None else len(entry.ids)
        ids = torch.full((batch, width), pad_id, dtype=torch.long)
        mask = torch.zeros((batch, past + width), dtype=torch.long)
        mask[:, :past] = 1
        positions = torch.full((batch, width), past, dtype=torch.long)
        for i, row in enumerate(rows):
            pad = width - len(row)
            ids[i, pad:] = torch.tensor(row)
            mask[i, past + pad :] = 1
            positions[i, pad:] = torch.arange(past, past + len(row))
        device = self.device
        ids, mask, positions = ids.to(device), mask.to(device), positions.to(device)
        kwargs: dict[str, Any] = {}
        if entry is not None:
            kwargs[self._cache_argument] = self._fresh_cache(entry, batch)
        out = self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            use_cache=use_cache,
            logits_to_keep=1,
            **kwargs,
        )
        self.stats["forward_tokens"] += batch * width
        return out.logits[:, -1, :].float(), _returned_cache(out), mask, positions[:, -1] + 1

    def verdict_logits(self, prompts: Sequence[GuardPrompt], fmt: GuardFormat, cached: bool = True) -> torch.Tensor:
        """Last-position logits [B, V] at the verdict position (for tests and diagnostics)."""
        tokens = self.verdict_tokens(fmt)
        encoded = [self.encode(p, fmt) for p in prompts]
        if cached:
            groups: dict[str, list[int]] = {}
            for i, p in enumerate(prompts):
                groups.setdefault(p.prefix, []).append(i)
            result: list[torch.Tensor | None] = [None] * len(prompts)
            for prefix, idx in groups.items():
                entry = self.prefix_entry(prefix, encoded[idx[0]][0])
                logits, *_ = self._forward_suffixes(entry, [encoded[i][1] + list(tokens.shared) for i in idx], False)
                for row, i in enumerate(idx):
                    result[i] = logits[row]
            return torch.stack([r for r in result if r is not None])
        rows = [pre + suf + list(tokens.shared) for pre, suf in encoded]
        logits, *_ = self._forward_suffixes(None, rows, False)
        return logits

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
    def _complete_group(
        self, prompts: list[GuardPrompt], encoded: list[_Encoded], fmt: GuardFormat
    ) -> list[Completion]:
        tokens = self.verdict_tokens(fmt)
        entry = self.prefix_entry(encoded[0].prefix, encoded[0].prefix_ids)
        rows = [e.suffix_ids + list(tokens.shared) for e in encoded]
        logits, cache, mask, next_pos = self._forward_suffixes(entry, rows)
        p_unsafe = self._p_unsafe(logits, tokens).tolist()
        unsafe_rows = [i for i, (p, prompt) in enumerate(zip(p_unsafe, prompts, strict=True)) if p >= prompt.threshold]
        texts = ["safe"] * len(prompts)
        if unsafe_rows:
            for i, tail in zip(
                unsafe_rows, self._generate_codes(cache, mask, next_pos, unsafe_rows, tokens), strict=True
            ):
                texts[i] = "unsafe" + tail
        return [Completion(text, p) for text, p in zip(texts, p_unsafe, strict=True)]

    @torch.no_grad()
    def _complete_naive(
        self, prompts: list[GuardPrompt], encoded: list[_Encoded], fmt: GuardFormat
    ) -> list[Completion]:
        """Baseline: the whole prompt each time, ``model.generate`` writes the verdict."""
        tokens = self.verdict_tokens(fmt)
        rows = [e.prefix_ids + e.suffix_ids for e in encoded]
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
        encoded = []
        for p in prompts:
            prefix_ids, suffix_ids = self.encode(p, fmt)
            encoded.append(_Encoded(p.prefix, prefix_ids, suffix_ids))
        results: list[Completion | None] = [None] * len(prompts)
        groups: dict[str, list[int]] = {}
        for i, p in enumerate(prompts):
            groups.setdefault(p.prefix, []).append(i)
        with self._lock:
            for idx in groups.values():
                # Similar lengths together keep padding small.
                idx = sorted(idx, key=lambda i: len(encoded[i].suffix_ids))
                for start in range(0, len(idx), self.max_batch_size):
                    chunk = idx[start : start + self.max_batch_size]
                    run = self._complete_naive if self.mode == "naive" else self._complete_group
                    out = run([prompts[i] for i in chunk], [encoded[i] for i in chunk], fmt)
                    for i, completion in zip(chunk, out, strict=True):
                        results[i] = completion
        return [r for r in results if r is not None]
