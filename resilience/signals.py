"""Signals other parts (metrics, dashboards) subscribe to.

- `call_completed`: after every logical upstream call, with `call`: an object
  with the call-log fields as attributes (upstream, method, path, status,
  outcome, latency_ms, attempts, retries, cache_hit, breaker_state,
  request_id, error; once the client sets them, `endpoint` and `sample_rate`,
  which resilience.telemetry reads with defaults). Receivers must not keep or
  change it.
- `breaker_state_changed`: `upstream`, `old`, `new`, sent once per change by
  the process that made it.
- `health_changed`: `upstream`, `old`, `new`, `probe`, sent by the scheduled
  health probe (resilience.ops.tasks) when an upstream's health changes.
- `cache_cleared`: `namespace`, sent by resilience.cache.ops after a
  namespace's keys were deleted (the client empties its near caches on `http`:
  the cache floor cannot call up into the client).
"""
from django.dispatch import Signal

# use_caching: sent once per upstream call, so receivers are looked up once
# per sender instead of on every send.
call_completed = Signal(use_caching=True)
breaker_state_changed = Signal(use_caching=True)
# `upstream`, `old` ("healthy"/"unhealthy", None on the first probe), `new`,
# `probe` (the probe's outcome dict); sent by the worker that ran the probe.
health_changed = Signal()
# `namespace`; sent in the process that cleared it.
cache_cleared = Signal()
