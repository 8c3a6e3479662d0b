"""Asking a guard: the one request builder (``request``), the Verdict record (``verdict``), the bounded,
fail-closed check (``run``) and the audit log (``audit``).
"""
