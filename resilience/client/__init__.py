"""The resilient client: the one way code in this service calls an upstream.

`upstream("github").get("/repos/x", params=...)` (sync, requests) or
`await upstream("github").aget(...)` (async, httpx2) returns a response with
`from_cache`, `stale`, `shared` and `attempts`, or raises an `UpstreamError`
kind (resilience.exceptions). A call goes through, in order:

1. the live policy (re-read within `POLICY_CHECK_INTERVAL` of a change): live;
2. path checks: the call can only reach the upstream's own base URL: urls;
3. the response cache and single-flight (threads, tasks, and processes via
   Redis): cached, flight;
4. the endpoint for each attempt (one for a single-URL upstream; strategies,
   cooldowns, failover to another endpoint inside the deadline): attempt,
   endpoints;
   its shared circuit breaker (no lock held around the call, no round trip
   on a healthy call): breaker;
5. the bulkhead (calls in flight per process): bulkhead;
6. the transport: a pooled `requests.Session` with urllib3 retries (send) or
   httpx2 pools with the same retry policy (asend); every wait and timeout is
   bounded by the call's deadline (policy);
7. one call record: a call-log row, buffered, and `call_completed`: recorder, record.

On failure: connection errors, timeouts, exhausted retries and 5xx count
against the breaker; 4xx and local exhaustion (bulkhead, pool) do not. With
`cache_serve_stale`, an expired copy answers instead of the error. Messages
never carry a URL, query or credential (failures, credentials).

Modules: urls (join and redact), spec (what a call asks), credentials,
responses (cache entries, response classes, near cache), policy, endpoints, breaker,
flight, bulkhead, send / asend (the two transports), failures (classify),
record (the call record), live (policy reload), core (the two faces over
the steps), steps (the commands and values the steps exchange), cached (the
cache and single-flight step), attempt (the attempt step, on one `Attempt`),
recorder (the record step), registry (one client per name), stream (the stream supervisor:
timers, failover after the first byte, one answer; `upstream(name).astream`)
and openai_wire (OpenAI's stream format for it), context (the request id and
caller a call carries) and receivers (policy changes, breaker events, cleared
caches). Callers import `resilience.upstream`
and resilience.exceptions; the names below are for the project's own parts.

Who may import it: every floor above the calls floor (jobs, advisor, alerts,
aigen, the edges); telemetry reads the breakers' shared state from the cache
floor (resilience.cache.breakers), never from here. It imports
the storage floor (cache, models, conf, exceptions) and the telemetry it
records calls in, never a floor above.
"""
from resilience.client.core import UpstreamClient
from resilience.client.live import policy_changed
from resilience.client.registry import near_caches_clear, reset_clients, upstream_client
from resilience.client.urls import join_url, redact_library_logs

redact_library_logs()

__all__ = ["UpstreamClient", "join_url", "near_caches_clear", "policy_changed", "reset_clients",
           "upstream_client"]
