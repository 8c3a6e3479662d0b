"""The graph's nodes, typed on the shared state (``state.py``) and the per-run context (``context.py``),
and the guard logic they share: ``checks`` (one request builder, one fail-closed check, the audit log),
``guards`` (the Guard protocol, Llama Guard and the offline guard), ``streaming`` (generation, hold-back
release, the first-chunk precheck); beside them ``evaluation``, ``integrations`` (GuardedChatModel) and
``training`` (the offline guard's training, never imported at run time).
"""
