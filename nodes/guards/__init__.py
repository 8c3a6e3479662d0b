"""The Guard protocol and its implementations: Llama Guard over any completion backend (``llama_guard``), the
offline guard (``offline``), and wrappers for any guard: ``windowed`` (long text, with ``incremental``:
a growing text re-checks only its new windows), ``thresholds`` (the policy's thresholds), ``examples``
(example-defined categories) and ``batching`` (concurrent checks share a batch).
"""
