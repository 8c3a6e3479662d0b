"""The ``guardgraph`` command line: ``app`` (ask, check, chat, render), ``options`` (the shared options,
declared once), ``eval``, ``bench`` and ``prepare``.
"""
