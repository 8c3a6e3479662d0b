"""Llama Guard as a prompt: formats as data, one renderer, the sanitizer and the parser (``guard`` joins
them: render, call, parse), and the completion backends it runs on (``kv_cache``: the transformers
backend's token-prefix cache).
"""
