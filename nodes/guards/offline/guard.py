"""OfflineGuard: the default guard when no guard model is given (CPU, no network, shipped in the project).

It answers like Llama Guard: safe / unsafe plus the policy's category codes, and a score = P(unsafe).

* Standard hazards: the fine-tuned MiniLM predicts an overall unsafe probability and per-hazard probabilities
  (S1..S14 of Llama Guard 3); a policy category is hit when a hazard it ``covers`` is detected.
* Example-defined categories (``examples`` / ``counter_examples`` in the policy file): a logistic regression
  on the base encoder's sentence embeddings, fit at first use of a policy (positives: the examples;
  negatives: the counter-examples, the other categories' examples and generic benign prompts), cached by
  the category's content.
"""

from __future__ import annotations

import functools
import json
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from guardgraph.nodes.checks.request import GuardRequest
from guardgraph.nodes.checks.verdict import CategoryHit, Outcome, Verdict
from guardgraph.nodes.guards.base import BaseGuard
from guardgraph.nodes.guards.offline.network import HAZARDS, GuardNet, encode_pair, load_base, load_trained, pad_batch
from guardgraph.nodes.guards.offline.precision import guard_dtype
from guardgraph.nodes.guards.sentences import split_sentences
from guardgraph.policies.model import Category, Policy

DEFAULT_ARTIFACT = Path(__file__).resolve().parent / "artifact"
BATCH = 16  # measured best on a 2-core CPU (bf16): larger batches pad short User rows to Agent-row length


def _sigmoid(x: np.ndarray | float) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(x, dtype=np.float64)))


class ExampleClassifier:
    """P(text belongs to an example-defined category), from its examples vs look-alikes and benign text."""

    def __init__(self, pos: np.ndarray, counter: np.ndarray, other: np.ndarray, generic: np.ndarray, c: float = 100.0):
        parts = [(pos, 1, 1.0), (counter, 0, 0.45), (other, 0, 0.15), (generic, 0, 0.4)]
        xs, ys, ws = [], [], []
        for x, label, total in parts:
            if len(x):
                xs.append(x)
                ys.append(np.full(len(x), float(label)))
                ws.append(np.full(len(x), total / len(x)))
        weights = np.concatenate(ws)
        self.w, self.b = _fit_logistic(np.vstack(xs), np.concatenate(ys), weights * len(weights) / weights.sum(), c)

    def __call__(self, emb: np.ndarray) -> np.ndarray:
        return _sigmoid(emb.astype(np.float64) @ self.w + self.b)


def _fit_logistic(x: np.ndarray, y: np.ndarray, sample_weight: np.ndarray, c: float) -> tuple[np.ndarray, float]:
    """L2-regularized logistic regression (sklearn's objective: C * weighted log-loss + ||w||^2 / 2), by L-BFGS."""
    xt = torch.tensor(x, dtype=torch.float64)
    yt = torch.tensor(y, dtype=torch.float64)
    st = torch.tensor(sample_weight, dtype=torch.float64)
    w = torch.zeros(xt.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=1000, tolerance_grad=1e-9, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        logits = xt @ w + b
        loss = c * (st * torch.nn.functional.binary_cross_entropy_with_logits(logits, yt, reduction="none")).sum()
        loss = loss + 0.5 * (w * w).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return w.detach().numpy(), float(b.detach())


class OfflineGuard(BaseGuard):
    """Fine-tuned all-MiniLM-L6-v2 guard; one encoder forward per check."""

    name = "offline-minilm"
    # The encoder reads 128 tokens (an Agent check: 40 of the prompt, the rest of the reply), so long text is
    # checked by ``guardgraph.nodes.guards.windowed`` in windows that fit: ~4 characters a token, with margin.
    max_input_chars = 320
    window_overlap_chars = 80

    def __init__(
        self,
        artifact_dir: Path | None = None,
        device: str = "cpu",
        dtype: str = "auto",
        sentence_evidence: bool | None = None,
    ):
        self.artifact_dir = Path(artifact_dir) if artifact_dir is not None else DEFAULT_ARTIFACT
        self.device = device
        self.dtype = guard_dtype(device, dtype)
        self.config = json.loads((self.artifact_dir / "config.json").read_text())
        self.tokenizer, base = load_base(device)
        self.net = GuardNet(base, split=int(self.config["split"]))
        self.generic_benign = load_trained(self.net, self.artifact_dir)["generic_benign_embeddings"].float().numpy()
        self.net.to(device=device, dtype=self.dtype).eval()
        self.max_len = int(self.config.get("max_len", 128))
        self.thresholds = {k: float(v) for k, v in self.config["unsafe_logit_threshold"].items()}
        self.hazard_threshold = float(self.config.get("hazard_threshold", 0.5))
        # Whether each sentence of a longer text is also read alone (see _sentence_evidence); the artifact says
        # whether its model was trained to judge single sentences.
        self.sentence_evidence = (
            bool(self.config.get("sentence_evidence", False)) if sentence_evidence is None else sentence_evidence
        )
        self._classifiers: dict[tuple, ExampleClassifier] = {}
        self._lock = threading.Lock()

    @classmethod
    def load_default(cls) -> OfflineGuard:
        """The shipped guard, loaded once per process."""
        return _default_guard()

    # ------------------------------------------------------------------ encoder
    def _forward(self, items: list[tuple[list[int], list[int]]], want_logits: bool, want_emb: bool):
        logits = np.zeros((len(items), 1 + len(HAZARDS)), dtype=np.float32)
        embs = np.zeros((len(items), self.net.head.in_features), dtype=np.float32)
        order = sorted(range(len(items)), key=lambda i: len(items[i][0]))
        with torch.inference_mode():
            for start in range(0, len(order), BATCH):
                chunk = order[start : start + BATCH]
                batch = pad_batch([items[i] for i in chunk], self.device)
                lower = self.net.lower(**batch)
                if want_logits:
                    logits[chunk] = self.net.upper(lower, batch["attention_mask"]).float().cpu().numpy()
                if want_emb:
                    embs[chunk] = self.net.sentence_embedding(lower, batch["attention_mask"]).float().cpu().numpy()
        return logits, embs

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Normalized all-MiniLM-L6-v2 sentence embeddings."""
        if not texts:
            return np.zeros((0, self.net.head.in_features), dtype=np.float32)
        return self._forward([encode_pair(self.tokenizer, t, None, self.max_len) for t in texts], False, True)[1]

    # ------------------------------------------------------------------ example-defined categories
    @staticmethod
    def _example_categories(policy: Policy) -> tuple[Category, ...]:
        return tuple(c for c in policy.active_categories if c.examples)

    def _classifier(self, category: Category, policy: Policy) -> ExampleClassifier:
        others = tuple(e for c in policy.categories if c.code != category.code for e in c.examples)
        key = (category.examples, category.counter_examples, others)
        with self._lock:
            clf = self._classifiers.get(key)
        if clf is None:
            clf = ExampleClassifier(
                self.embed(category.examples),
                self.embed(category.counter_examples),
                self.embed(others),
                self.generic_benign,
            )
            with self._lock:
                self._classifiers[key] = clf
        return clf

    # ------------------------------------------------------------------ checks
    @staticmethod
    def _texts(request: GuardRequest) -> tuple[str, str | None]:
        if request.role == "User":
            return request.checked_text, None
        prompt = next((t.text for t in reversed(request.turns[:-1]) if t.speaker == "user"), "")
        return prompt, request.checked_text

    def _check_batch(self, requests: Sequence[GuardRequest]) -> list[Verdict]:
        pairs = [self._texts(r) for r in requests]
        encoded = [encode_pair(self.tokenizer, p, resp, self.max_len) for p, resp in pairs]
        need_emb = [bool(self._example_categories(r.policy)) for r in requests]
        user_emb_needed = any(need and r.role == "User" for need, r in zip(need_emb, requests, strict=True))
        logits, embs = self._forward(encoded, True, user_emb_needed)
        logits, parts = self._sentence_evidence(requests, logits)
        agent_idx = [i for i, r in enumerate(requests) if need_emb[i] and r.role == "Agent"]
        if agent_idx:  # the reply alone is what an example-defined category is judged on
            embs[agent_idx] = self.embed([pairs[i][1] or "" for i in agent_idx])
        verdicts = [self._verdict(r, logits[i], embs[i] if need_emb[i] else None) for i, r in enumerate(requests)]
        return [
            v if part is None else v.with_updates(metadata={**v.metadata, "sentence": part})
            for v, part in zip(verdicts, parts, strict=True)
        ]

    # ------------------------------------------------------------------ sentence evidence
    def _sentence_evidence(
        self, requests: Sequence[GuardRequest], logits: np.ndarray
    ) -> tuple[np.ndarray, list[int | None]]:
        """Each request's logits, replaced by those of its most harmful sentence read alone where that sentence
        is judged more harmful than the whole text; and that sentence's index where it is judged unsafe.

        The encoder mean-pools its input, so one harmful sentence among harmless ones is diluted; read alone
        (a User check of just that sentence, whatever the role) it is not. Each distinct sentence of the batch is
        encoded once, so windows that overlap, or repeat, share their sentences.
        """
        parts: list[int | None] = [None] * len(requests)
        if not self.sentence_evidence:
            return logits, parts
        sentences = [_sentences(r.checked_text) for r in requests]
        distinct = list(dict.fromkeys(s for found in sentences for s in found))
        if not distinct:
            return logits, parts
        encoded = [encode_pair(self.tokenizer, s, None, self.max_len) for s in distinct]
        sentence_logits = self._forward(encoded, True, False)[0]
        margins = sentence_logits[:, 0] - self.thresholds["User"]
        index = {s: i for i, s in enumerate(distinct)}
        out = logits.copy()
        for k, (request, found) in enumerate(zip(requests, sentences, strict=True)):
            if not found:
                continue
            best = max(range(len(found)), key=lambda j: margins[index[found[j]]])
            row = index[found[best]]
            threshold = self.thresholds[request.role]
            if margins[row] > logits[k, 0] - threshold:
                out[k] = sentence_logits[row]
                out[k, 0] = margins[row] + threshold  # the same distance from this role's threshold
                if margins[row] >= 0:
                    parts[k] = best
        return out, parts

    def _verdict(self, request: GuardRequest, logit: np.ndarray, emb: np.ndarray | None) -> Verdict:
        policy = request.policy
        p_unsafe = float(_sigmoid(logit[0] - self.thresholds[request.role]))
        hazard_p = dict(zip(HAZARDS, _sigmoid(logit[1:]).tolist(), strict=True))
        hits: list[Category] = []
        unsafe = p_unsafe >= policy.threshold
        if unsafe:
            covered = [c for c in policy.active_categories if c.covers]
            scores = {c.code: max(hazard_p.get(h, 0.0) for h in c.covers) for c in covered}
            hits = [c for c in covered if scores[c.code] >= self.hazard_threshold]
            confident = {h for h, p in hazard_p.items() if p >= self.hazard_threshold}
            active_covers = {h for c in covered for h in c.covers}
            excluded_covers = {h for c in policy.categories if c.code in policy.exclude for h in c.covers}
            if confident and not (confident & active_covers) and confident <= excluded_covers:
                unsafe = False  # only hazards the policy explicitly excludes
            elif not hits and covered:
                hits = [max(covered, key=lambda c: scores[c.code])]
        score = p_unsafe
        category_scores: dict[str, float] = {}
        if emb is not None:
            for category in self._example_categories(policy):
                p = float(self._classifier(category, policy)(emb[None, :])[0])
                category_scores[category.code] = round(p, 4)
                score = max(score, p)
                if p >= policy.threshold_for(category.code):
                    hits.append(category)
                    unsafe = True
        if not unsafe:
            hits = []
        order = {c.code: i for i, c in enumerate(policy.active_categories)}
        hits = sorted({c.code: c for c in hits}.values(), key=lambda c: order[c.code])
        codes = [c.code for c in hits]
        raw = "unsafe" + ("\n" + ",".join(codes) if codes else "") if unsafe else "safe"
        return Verdict(
            role=request.role,
            outcome=Outcome.UNSAFE if unsafe else Outcome.SAFE,
            categories=tuple(CategoryHit(c.code, c.name) for c in hits),
            score=round(min(1.0, max(0.0, score)), 6),
            guard=self.name,
            raw=raw,
            metadata={
                "p_unsafe": round(p_unsafe, 6),
                "hazards": {h: round(p, 4) for h, p in hazard_p.items() if p >= 0.05},
                **({"example_categories": category_scores} if category_scores else {}),
            },
        )


def _sentences(text: str) -> list[str]:
    """The sentences of ``text`` with a letter in them; none when there is only one (the text says it all)."""
    sentences = [s for s in split_sentences(text) if any(c.isalpha() for c in s)]
    return sentences if len(sentences) > 1 else []


@functools.lru_cache(maxsize=1)
def _default_guard() -> OfflineGuard:
    return OfflineGuard()
