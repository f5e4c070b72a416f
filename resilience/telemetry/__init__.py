"""Telemetry whose cost does not grow with traffic.

Owns the call log (one row per failed, retried, stale or rejected call and a
sample of the successes: `calllog`), the buffered writer that takes it off the
hot path (`buffered`), per-minute and per-hour rollups with log-bucket latency
histograms (`rollups`, `histogram`), the statistics read from them
(`selectors`, `timeseries`), retention (`retention`) and the Prometheus
metrics (`metrics`).

Who calls what: the client calls `calllog.call_log_record()` once per logical
call (and sends `resilience.signals.call_completed`, which `metrics` counts);
views, the admin, the dashboard and management commands read through
`selectors` and `timeseries` and prune through `retention`. `counters` keeps
the few per-call counts the advisor's rules need that rollups do not.

Who may import it: the calls floor (the client records here) and every floor
above. It imports the storage floor, never the client: the shared breakers'
state it shows (`selectors.breaker_status`, `metrics.BreakerCollector`) is
read from the cache floor (resilience.cache.breakers), where the client's
breakers keep it.
"""
