"""Streaming a guarded reply: background generation, hold-back release chunk by chunk, and the first
chunk's precheck.
"""
