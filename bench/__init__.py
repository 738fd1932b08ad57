"""Benchmarks: each reports its figures beside a reference measured in the same run."""
