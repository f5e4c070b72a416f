"""The log-bucket histogram: its error bound on any data, merging, JSON keys."""
from __future__ import annotations

import math
import random

import pytest

from resilience.telemetry import histogram


def exact(values: list[float], q: float) -> float:
    """Nearest-rank percentile: the ceil(q * n)-th smallest value."""
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q * len(ordered))) - 1]


def datasets() -> dict[str, list[float]]:
    rng = random.Random(20261128)
    return {
        "skewed (log-normal)": [rng.lognormvariate(3.0, 1.2) for _ in range(20_000)],
        "heavy tail (Pareto)": [5 * rng.paretovariate(1.1) for _ in range(20_000)],
        "bimodal (cache-ish 2 ms, slow 900 ms)": [
            rng.gauss(2.0, 0.3) if rng.random() < 0.9 else rng.gauss(900.0, 80.0) for _ in range(20_000)],
        "constant": [42.0] * 5_000,
        "sub-millisecond": [rng.uniform(0.05, 0.9) for _ in range(5_000)],
        "one value": [123.456],
        "two values": [1.0, 1000.0],
    }


@pytest.mark.parametrize("name", list(datasets()))
def test_every_percentile_is_within_alpha_of_the_exact_nearest_rank(name):
    values = [max(v, 0.01) for v in datasets()[name]]
    qs = (0.0, 0.01, 0.25, 0.5, 0.9, 0.95, 0.99, 0.999, 1.0)
    answers = histogram.percentiles(histogram.of(values), qs)
    for q, answer in zip(qs, answers, strict=True):
        truth = exact(values, q)
        assert abs(answer - truth) <= histogram.ALPHA * truth * 1.0001, (name, q, answer, truth)


def test_merging_loses_nothing_and_json_keys_merge_like_ints():
    rng = random.Random(1)
    parts = [[rng.expovariate(1 / 50) for _ in range(1000)] for _ in range(5)]
    merged: dict[int, int] = {}
    for part in parts:
        histogram.merge(merged, histogram.to_json(histogram.of(part)))  # as stored: string keys
    everything = [v for part in parts for v in part]
    assert merged == histogram.of(everything)
    assert sum(merged.values()) == 5000
    assert histogram.percentiles(merged, (0.99,)) == histogram.percentiles(histogram.of(everything), (0.99,))


def test_empty_histogram_has_no_percentiles_and_tiny_values_share_the_lowest_bucket():
    assert histogram.percentiles({}, (0.5, 0.99)) == [None, None]
    assert histogram.bucket_of(0.0) == histogram.bucket_of(histogram.MIN_VALUE)
    # From 1 ms to a minute: a bounded number of buckets, whatever the traffic.
    assert histogram.bucket_of(60_000) - histogram.bucket_of(1.0) <= 315
