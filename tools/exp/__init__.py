"""Helpers of ``tools/experiments.py``: settings and methods, one run, torch shrinking, the report."""
