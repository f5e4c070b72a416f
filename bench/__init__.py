"""Benchmarks: `make bench` (python -m bench) runs every bench_*.py module.

Each prints a markdown table of ratios measured side by side in one run, so
machine noise cancels out; absolute times are shown for orientation only.
"""
