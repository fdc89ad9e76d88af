"""Benchmarks: measured comparisons, each checking its answer before reporting speed."""
