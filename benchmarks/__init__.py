"""Benchmarks (not tests): `python -m benchmarks` runs them all; see benchmarks/README.md."""
