"""Benchmarks (``make bench`` / ``python -m bench [--quick]``); results in ``bench/results/``.

Not part of the test suite: ``tests/e2e/test_bench_smoke.py`` only runs the harness at a toy
size so it cannot rot.
"""
