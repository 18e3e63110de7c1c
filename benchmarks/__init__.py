"""Reproducible benchmarks; each writes Markdown (and PNG) results to benchmarks/results/."""
