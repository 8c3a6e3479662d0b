"""How many intra-op threads torch gets: ``$GUARDGRAPH_TORCH_THREADS``, else half the CPUs."""

from __future__ import annotations

import os

THREADS_ENV = "GUARDGRAPH_TORCH_THREADS"


def default_num_threads() -> int:
    """``$GUARDGRAPH_TORCH_THREADS``, else half the CPUs this process may use (at least 1, at most 8).

    Half, because in a chat turn the guard runs beside the chat model (the input check during the first
    tokens, the output checks while later tokens decode), and two models that each take every core make
    their threads spin against each other: on a 2-core machine `guardgraph bench` measured guarded turns
    8 % (offline guard) and 25 % (Llama Guard stand-in) slower than unguarded ones with 2 threads, and
    within the noise (1-5 %) with 1. Small models stop scaling past a handful of threads anyway.
    """
    env = os.environ.get(THREADS_ENV)
    if env:
        return max(1, int(env))
    try:
        available = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        available = os.cpu_count() or 1
    return max(1, min(available // 2, 8))


def configure_torch_threads(num_threads: int | None = None) -> int:
    """Set torch's intra-op threads (``num_threads`` or :func:`default_num_threads`); return it.

    Left alone when the user set ``OMP_NUM_THREADS`` and passed nothing.
    """
    import torch

    if num_threads is None:
        if os.environ.get("OMP_NUM_THREADS") and not os.environ.get(THREADS_ENV):
            return torch.get_num_threads()
        num_threads = default_num_threads()
    if torch.get_num_threads() != num_threads:
        torch.set_num_threads(num_threads)
    return num_threads
