"""Reproducible benchmarks: each prints a table against its peers, measured in the same
process, and writes the figures as JSON. Run with ``dqnkit bench NAME``."""
