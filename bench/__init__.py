"""Benchmark harness: `./dev bench` (python -m bench). Writes docs/benchmarks.md."""
