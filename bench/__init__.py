"""Benchmarks: each prints a table and writes Markdown and PNG results under bench/results/."""
