"""Benchmark support: an implementation of CASS with the released code's structure.

Used by ``benchmark.py --mode reference-loop`` as the baseline for the speed
comparison, and by the tests as an independent check of the fast path.
"""
