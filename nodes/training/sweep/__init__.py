"""Sweeps of training recipes on a GPU machine (nodes/training/README.md, "Sweeps on a GPU")."""
