"""Keys and values of token sequences a guard model has read, reused by the longest shared token prefix.

Consecutive Llama Guard prompts share most of their tokens: the policy block (the same for every check of
a role), the conversation and, while a reply streams, the reply up to the newest chunk. A
:class:`TokenPrefixCache` keeps the keys and values of recent prompts; a new prompt looks up the entry that
shares the longest token prefix with it and runs only the tokens after that prefix. Matching is by token
ids, never by text: where a chunk boundary tokenizes differently, the match just ends earlier.

- **Never written.** An entry's tensors are only read, through views (:func:`cache_view`); transformers'
  ``DynamicLayer`` grows a cache by ``torch.cat`` into new tensors, so a forward pass over a view leaves
  the entry as it was. Entries whose layers are not plain ``DynamicLayer``s (sliding windows, quantized,
  offloaded) are deep-copied for each use and matched only in full.
- **Bounded.** Entries are evicted least recently used first once their bytes (the storage their tensors
  keep alive) exceed ``max_bytes``. An entry that a newer one extends (its ids a prefix of the newer
  one's) serves every lookup no better than the newer one and is dropped: a streamed reply keeps one
  entry, its latest check.
- **Thread-safe.** Lookups and insertions hold a lock; an entry never changes once stored.
"""

from __future__ import annotations

import copy
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

DEFAULT_MAX_BYTES = 1 << 30  # 1 GiB: ~23k tokens of a 135M-parameter model in float32, ~8k of an 8B in bfloat16


@dataclass(frozen=True)
class CachedTokens:
    """The keys and values (a transformers ``Cache`` of batch 1) of the token ids ``ids``."""

    ids: tuple[int, ...]
    kv: Any
    nbytes: int
    croppable: bool

    def __len__(self) -> int:
        return len(self.ids)


@dataclass(frozen=True)
class Match:
    """``entry`` shares its first ``length`` token ids with the looked-up sequence."""

    entry: CachedTokens
    length: int


def shared_length(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading token ids ``a`` and ``b`` have in common."""
    a, b = tuple(a), tuple(b)
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    low, high = 0, n  # a[:low] == b[:low], a[:high] != b[:high]
    while high - low > 1:
        middle = (low + high) // 2
        if a[:middle] == b[:middle]:
            low = middle
        else:
            high = middle
    return low


def _plain_layers(kv: Any) -> list[Any] | None:
    """The cache's layers when every one is a plain ``DynamicLayer`` (growing by concatenation), else None."""
    from transformers.cache_utils import DynamicLayer

    layers = getattr(kv, "layers", None)
    if layers is None or not all(type(layer) is DynamicLayer for layer in layers):
        return None
    return list(layers)


def _filled(layer: Any) -> bool:
    return getattr(layer, "keys", None) is not None and layer.keys.numel() > 0


def kv_bytes(kv: Any) -> int:
    """Bytes of the storage a cache's keys and values keep alive (a view counts its whole base once)."""
    seen: dict[int, int] = {}
    for layer in getattr(kv, "layers", None) or ():
        for tensor in (getattr(layer, "keys", None), getattr(layer, "values", None)):
            if tensor is not None and tensor.numel():
                storage = tensor.untyped_storage()
                seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


def cache_view(kv: Any, length: int, batch: int) -> Any:
    """A cache over the first ``length`` positions of ``kv`` for ``batch`` rows; ``kv`` itself is only read.

    Plain ``DynamicLayer``s get layer copies that point at (sliced, expanded) views of the stored tensors;
    any other cache is deep-copied (and must then be used at its full length).
    """
    layers = _plain_layers(kv)
    if layers is None:
        cache = copy.deepcopy(kv)
        if batch > 1:
            cache.batch_repeat_interleave(batch)
        return cache
    cache = copy.copy(kv)
    cache.layers = []
    for layer in layers:
        clone = copy.copy(layer)
        if _filled(layer):
            keys, values = layer.keys[..., :length, :], layer.values[..., :length, :]
            if batch > 1:
                keys = keys.expand(batch, *keys.shape[1:])
                values = values.expand(batch, *values.shape[1:])
            clone.keys, clone.values = keys, values
        cache.layers.append(clone)
    return cache


def row_cache(kv: Any, row: int, spans: Sequence[tuple[int, int]]) -> Any:
    """Batch row ``row`` of a returned cache at the positions ``spans`` (start, end), as a cache of batch 1.

    One span of a one-row cache is a view (no copy); several spans, or a row of a batch, are copied out.
    The returned cache has layer objects of its own: later updates of ``kv`` (generation) do not reach it.
    """
    layers = _plain_layers(kv)
    if layers is None:
        raise ValueError("only caches of plain DynamicLayers can be cut into rows")
    import torch

    cache = copy.copy(kv)
    cache.layers = []
    for layer in layers:
        clone = copy.copy(layer)
        if _filled(layer):
            parts = [(layer.keys[row : row + 1, :, a:b], layer.values[row : row + 1, :, a:b]) for a, b in spans]
            if len(parts) == 1 and layer.keys.shape[0] == 1:
                clone.keys, clone.values = parts[0]
            else:
                clone.keys = torch.cat([k for k, _ in parts], dim=-2)
                clone.values = torch.cat([v for _, v in parts], dim=-2)
        cache.layers.append(clone)
    return cache


class TokenPrefixCache:
    """Keys and values of recent token sequences, looked up by longest shared prefix (see the module doc)."""

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[tuple[int, ...], CachedTokens] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def nbytes(self) -> int:
        return self._bytes

    def entries(self) -> list[CachedTokens]:
        """The stored entries, least recently used first."""
        with self._lock:
            return list(self._entries.values())

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0

    def longest(self, ids: Sequence[int]) -> Match | None:
        """The entry sharing the most leading ids with ``ids`` (None if none shares any).

        An entry that cannot be cropped counts only when all of it is shared.
        """
        query = tuple(ids)
        best: Match | None = None
        with self._lock:
            for entry in self._entries.values():
                length = shared_length(entry.ids, query)
                if length < len(entry) and not entry.croppable:
                    continue
                if length and (best is None or length > best.length):
                    best = Match(entry, length)
            if best is not None:
                self._entries.move_to_end(best.entry.ids)
        return best

    def add(self, ids: Sequence[int], kv: Any) -> CachedTokens:
        """Store the keys and values ``kv`` of ``ids``; the entry is returned even when it is too big to keep."""
        entry = CachedTokens(tuple(ids), kv, kv_bytes(kv), _plain_layers(kv) is not None)
        if entry.nbytes > self.max_bytes or not entry.ids:
            return entry
        with self._lock:
            for key, old in list(self._entries.items()):
                if not (old.croppable and entry.croppable):
                    continue
                if len(old) > len(entry) and key[: len(entry)] == entry.ids:
                    self._entries.move_to_end(key)  # an entry that extends this one is already here
                    return old
                if key == entry.ids[: len(old)]:
                    self._drop(key)  # extended by the new entry: it can serve nothing the new one cannot
            if entry.ids in self._entries:
                self._drop(entry.ids)
            self._entries[entry.ids] = entry
            self._bytes += entry.nbytes
            while self._bytes > self.max_bytes and len(self._entries) > 1:
                self._drop(next(iter(self._entries)))
        return entry

    def _drop(self, key: tuple[int, ...]) -> None:
        self._bytes -= self._entries.pop(key).nbytes
