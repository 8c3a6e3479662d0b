"""OfflineGuard: the default guard when no guard model is given (CPU, no network, shipped in the project).

It answers like Llama Guard: safe / unsafe plus the policy's category codes, and a score = P(unsafe).

The fine-tuned MiniLM predicts an overall unsafe probability and per-hazard probabilities (S1..S14 of Llama
Guard 3); a policy category is hit when a hazard it ``covers`` is detected. Categories are named from the
policy's lowest threshold on; the thresholds themselves, and example-defined categories, are applied to this
guard's verdicts as to every guard's (``guardgraph.nodes.guards.thresholds`` and ``.examples``).

A sentence of a longer message read alone (a request whose ``part`` is ``"sentence"``, from the windowed guard)
is read by the artifact's sentence head when it has one: the sentence without its context, P(unsafe) from that
head's logit for the role (its own decision point at 0), the hazards from the main head. Without one, a
sentence reads as a message does.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from guardgraph.nodes.checks.request import GuardRequest
from guardgraph.nodes.checks.verdict import CategoryHit, Outcome, Verdict
from guardgraph.nodes.guards.base import BaseGuard
from guardgraph.nodes.guards.offline.network import (
    HAZARDS,
    SENTENCE_ROLES,
    GuardNet,
    artifact_pooling,
    encode_pair,
    encode_sentence,
    length_batches,
    load_base,
    load_trained,
    pad_batch,
    sentence_head_width,
)
from guardgraph.nodes.guards.offline.precision import guard_dtype
from guardgraph.nodes.guards.thresholds import lowest_threshold
from guardgraph.policies.model import Category

DEFAULT_ARTIFACT = Path(__file__).resolve().parent / "artifact"
# Tensors of the artifact that are not the network's: MiniLM embeddings of generic benign prompts, the example
# classifier's negatives (``guardgraph.nodes.guards.examples``), one per encoder space.
GENERIC_BENIGN = {"float": "generic_benign_embeddings", "int8": "generic_benign_embeddings_int8"}
BATCH = 16  # the most texts in one forward pass (measured best on a 2-core CPU, bf16)


def _sigmoid(x: np.ndarray | float) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(x, dtype=np.float64)))


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
        sentence_evidence: Mapping[str, float] | None = None,
    ):
        self.artifact_dir = Path(artifact_dir) if artifact_dir is not None else DEFAULT_ARTIFACT
        self.device = device
        self.dtype = guard_dtype(device, dtype)
        self.config = json.loads((self.artifact_dir / "config.json").read_text())
        self.tokenizer, base = load_base(device)
        self.net = GuardNet(
            base,
            split=int(self.config["split"]),
            pooling=artifact_pooling(self.artifact_dir),
            sentence_head=sentence_head_width(self.artifact_dir),
        )
        load_trained(self.net, self.artifact_dir)  # its other tensors are the example classifier's (GENERIC_BENIGN)
        self.net.to(device=device, dtype=self.dtype).eval()
        self.max_len = int(self.config.get("max_len", 128))
        self.thresholds = {k: float(v) for k, v in self.config["unsafe_logit_threshold"].items()}
        self.hazard_threshold = float(self.config.get("hazard_threshold", 0.5))
        # Per role, the margin (logits over the role's threshold) at which one sentence read alone flags a longer
        # text: the windowed guard reads it (guardgraph.nodes.guards.windowed); a role without one reads no
        # sentences. The artifact says, as chosen for its model on held-out rows (nodes/training/README.md).
        chosen = self.config.get("sentence_evidence", {}) if sentence_evidence is None else sentence_evidence
        unknown = sorted(set(chosen) - set(self.thresholds))
        if unknown:
            raise ValueError(f"{self.artifact_dir / 'config.json'}: sentence_evidence for unknown roles {unknown}")
        self.sentence_evidence = {role: float(margin) for role, margin in chosen.items()}
        # The sentence head reads a sentence alone, so the windowed guard sends no context with one.
        self.sentence_context = self.net.sentence_head is None

    @classmethod
    def load_default(cls) -> OfflineGuard:
        """The shipped guard, loaded once per process."""
        return _default_guard()

    # ------------------------------------------------------------------ encoder
    def _forward(self, items: list[tuple[list[int], list[int]]]) -> tuple[np.ndarray, np.ndarray | None]:
        """The main head's logits [n, 15] and the sentence head's [n, 2] (None without one)."""
        logits = np.zeros((len(items), 1 + len(HAZARDS)), dtype=np.float32)
        head = self.net.sentence_head
        sentence = np.zeros((len(items), len(SENTENCE_ROLES)), dtype=np.float32) if head is not None else None
        with torch.inference_mode():
            for chunk in length_batches([len(ids) for ids, _ in items], BATCH):
                batch = pad_batch([items[i] for i in chunk], self.device)
                pooled = self.net.pooled(self.net.lower(**batch), batch["attention_mask"])
                logits[chunk] = self.net.head(pooled).float().cpu().numpy()
                if head is not None and sentence is not None:
                    sentence[chunk] = head(pooled).float().cpu().numpy()
        return logits, sentence

    # ------------------------------------------------------------------ checks
    def _by_sentence_head(self, request: GuardRequest) -> bool:
        return request.part == "sentence" and self.net.sentence_head is not None

    def _encode(self, request: GuardRequest) -> tuple[list[int], list[int]]:
        if self._by_sentence_head(request):
            return encode_sentence(self.tokenizer, request.role, request.checked_text, self.max_len)
        if request.role == "User":
            return encode_pair(self.tokenizer, request.checked_text, None, self.max_len)
        prompt = next((t.text for t in reversed(request.turns[:-1]) if t.speaker == "user"), "")
        return encode_pair(self.tokenizer, prompt, request.checked_text, self.max_len)

    def _check_batch(self, requests: Sequence[GuardRequest]) -> list[Verdict]:
        logits, sentence = self._forward([self._encode(r) for r in requests])
        verdicts = []
        for i, request in enumerate(requests):
            if sentence is not None and self._by_sentence_head(request):
                unsafe = float(sentence[i, SENTENCE_ROLES.index(request.role)])
            else:
                unsafe = float(logits[i, 0]) - self.thresholds[request.role]
            verdicts.append(self._verdict(request, unsafe, logits[i, 1:]))
        return verdicts

    def _verdict(self, request: GuardRequest, unsafe_logit: float, hazard_logits: np.ndarray) -> Verdict:
        """The verdict from the unsafe logit over its decision point and the hazards' logits."""
        policy = request.policy
        p_unsafe = float(_sigmoid(unsafe_logit))
        hazard_p = dict(zip(HAZARDS, _sigmoid(hazard_logits).tolist(), strict=True))
        hits: list[Category] = []
        unsafe = p_unsafe >= lowest_threshold(policy)
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
            score=round(min(1.0, max(0.0, p_unsafe)), 6),
            guard=self.name,
            raw=raw,
            metadata={
                "p_unsafe": round(p_unsafe, 6),
                "hazards": {h: round(p, 4) for h, p in hazard_p.items() if p >= 0.05},
            },
        )


@functools.lru_cache(maxsize=1)
def _default_guard() -> OfflineGuard:
    return OfflineGuard()
