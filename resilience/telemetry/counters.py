"""Per-call counts the advisor needs, added to the rollups' `signals` map by
the call-log writer (off the request path: the writer thread folds them in
with the other counts, one upsert per flush as before).

Names and what each counts (per rollup bucket):

- `retried`: calls that took more than one attempt; `retried_ok`: those that
  ended in a success (status below 400). Retry waste is `retried_ok / retried`.
- `throttled`: 429 answers seen, the final one and every retried attempt's.
- `rejected_bulkhead`, `rejected_pool`: calls rejected by the process's
  bulkhead (no attempt was made) or because no pooled connection came free
  (an attempt had begun). Together they are the `rejected` outcome.
- `stream_<event>`: a streamed attempt's supervision events, counted on
  the endpoint they happened on (resilience.client.stream: `cut`,
  `timeout_first_token`, `timeout_idle`, `timeout_max`, `error_event`,
  `failover`, `continuation`, `splice`, `restart`, `skipped`, `no_done`).
- `cacheable`: successful GET/HEAD fetches from the upstream whose request can
  be keyed (the calls a response cache could answer); `refetch`: those whose
  key this process had fetched before, less than `REFETCH_WINDOW` seconds
  earlier; `refetch_gap_s`: the seconds since that earlier fetch, summed (the
  mean repeat interval is `refetch_gap_s / refetch`).

Cost: a few dict increments per call, plus for a successful GET one SHA-256
of the cache key and one bounded dict update (`RefetchTracker`: at most
`max_keys` keys per process, the least recently fetched dropped first). Repeats
are seen per process: with several workers a repeat that lands on another
worker is missed, so `refetch` undercounts, never overcounts.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any

#: Seconds within which a second fetch of the same key counts as a refetch.
REFETCH_WINDOW = 3600
CACHEABLE_METHODS = ("GET", "HEAD")


class RefetchTracker:
    """When each cacheable key was last fetched, for at most `max_keys` keys."""

    def __init__(self, max_keys: int = 20_000) -> None:
        self.max_keys = max_keys
        self._seen: OrderedDict[str, float] = OrderedDict()

    def see(self, key: str, at: float) -> float | None:
        """Record a fetch of `key` at `at`; the seconds since its previous
        fetch within `REFETCH_WINDOW`, else None."""
        previous = self._seen.pop(key, None)
        self._seen[key] = at
        if len(self._seen) > self.max_keys:
            self._seen.popitem(last=False)
        if previous is None or not 0 <= at - previous <= REFETCH_WINDOW:
            return None
        return at - previous

    def clear(self) -> None:
        self._seen.clear()


_tracker = RefetchTracker()


def refetch_tracker() -> RefetchTracker:
    return _tracker


def _bump(signals: dict[str, int], name: str, count: int = 1) -> None:
    signals[name] = signals.get(name, 0) + count


def signals_count(signals: dict[str, int], call: Any, *, outcome: str, attempts: int,
                  status: int | None, created: float) -> None:
    """Add one finished call's signals to `signals` (in place). `call` is the
    client's record (with `spec` and `retries`) or a row dict (no cache key)."""
    ok = outcome in ("ok", "stale", "cache_hit", "shared") and (status or 0) < 400
    if attempts > 1:
        _bump(signals, "retried")
        if ok and outcome == "ok":
            _bump(signals, "retried_ok")
    retries = (call.get("retries") if isinstance(call, dict) else getattr(call, "retries", ())) or ()
    throttled = sum(1 for attempt in retries if isinstance(attempt, dict) and attempt.get("status") == 429)
    if status == 429 and len(retries) < attempts:  # a retried call's last attempt is in its history already
        throttled += 1
    if throttled:
        _bump(signals, "throttled", throttled)
    if outcome == "rejected":
        _bump(signals, "rejected_pool" if attempts > 0 else "rejected_bulkhead")
    result = None if isinstance(call, dict) else getattr(call, "result", None)
    for name, count in getattr(result, "stream", None) or ():
        _bump(signals, f"stream_{name}", count)
    spec = None if isinstance(call, dict) else getattr(call, "spec", None)
    if (spec is not None and outcome == "ok" and attempts > 0 and status is not None and 200 <= status < 300
            and spec.method in CACHEABLE_METHODS and spec.cacheable):
        _bump(signals, "cacheable")
        gap = _tracker.see(spec.cache_key(call.upstream, ()), created)
        if gap is not None:
            _bump(signals, "refetch")
            _bump(signals, "refetch_gap_s", round(gap))
