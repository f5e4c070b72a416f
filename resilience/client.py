"""The resilient client: the one way code in this service calls an upstream.

`upstream("github").get("/repos/x", params=...)` returns a `requests.Response`
with `from_cache`, `stale` and `attempts` set, or raises an `UpstreamError`
kind (see resilience.exceptions). One call goes through, in order:

1. the live policy (re-read within `POLICY_CHECK_INTERVAL` of a change);
2. path checks: the call can only reach the upstream's own base URL;
3. the response cache (cacheable methods, `cache_ttl` > 0, `cache=False` skips);
4. single-flight for cacheable calls (threads always, processes via Redis);
5. the shared circuit breaker (`SharedBreaker.admit`, no lock held around
   the call);
6. one pooled `requests.Session` per upstream with urllib3 `PolicyRetry`,
   every wait and timeout bounded by the call's deadline;
7. one call-log row, buffered (resilience.calllog), and the `call_completed`
   signal (`call=`: upstream, method, path, status, outcome, latency_ms,
   attempts, retries, cache_hit, breaker_state, request_id, error) for metrics.

On failure: connection errors, timeouts, exhausted retries and 5xx count
against the breaker; 4xx do not (they are the caller's business). With
`cache_serve_stale`, an expired copy answers instead of the error.
"""
from __future__ import annotations

import functools
import hashlib
import json as json_module
import logging
import os
import threading
import time
import uuid
from collections import OrderedDict
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

import requests
from requests.adapters import HTTPAdapter
from requests.structures import CaseInsensitiveDict
from urllib3.exceptions import ConnectTimeoutError, MaxRetryError, NewConnectionError, ReadTimeoutError

from resilience import exceptions as errors
from resilience.breaker import BreakerLogListener, CircuitOpen, SharedBreaker
from resilience.cache import default_cache
from resilience.calllog import call_log_record
from resilience.conf import resilience_settings
from resilience.context import current_request_id
from resilience.flight import SingleFlight
from resilience.models import BreakerEvent, Outcome, Upstream
from resilience.policy import DeadlineExceeded, DeadlineTimeout, Policy, Trace, current_trace
from resilience.signals import breaker_state_changed, call_completed

logger = logging.getLogger(__name__)

SECRET_PARAMS = frozenset({"api_key", "apikey", "key", "token", "access_token", "auth", "secret",
                           "client_secret", "password", "signature", "sig", "code"})
# Response headers never replayed from the cache.
UNCACHED_HEADERS = frozenset({"set-cookie", "connection", "keep-alive", "transfer-encoding",
                              "content-encoding", "content-length"})
BODY_CHUNK = 64 * 1024


def _version_key(name: str) -> str:
    return f"policy:{name}:version"


def policy_changed(name: str) -> None:
    """Tell every worker that upstream `name`'s policy changed (post_save hook)."""
    default_cache().set(_version_key(name), uuid.uuid4().hex, timeout=None)


# -- URLs -------------------------------------------------------------------------------
@functools.lru_cache(maxsize=4096)
def join_url(base_url: str, path: str, *, upstream: str) -> str:
    """Join `path` under `base_url`; refuse anything that could leave it.

    A leading slash is optional and never escapes the base path; absolute
    URLs, scheme-relative `//host`, backslashes and `..` segments that climb
    above the base path raise `InvalidUpstreamPath`.
    """
    def refuse(why: str) -> errors.InvalidUpstreamPath:
        return errors.InvalidUpstreamPath(f"refused path {path!r}: {why}", upstream=upstream)

    if not isinstance(path, str):
        raise refuse("not a string")
    if "\\" in path or any(ord(c) < 32 for c in path):
        raise refuse("control characters or backslashes")
    if path.startswith("//") or "://" in path.split("?", 1)[0]:
        raise refuse("absolute URLs are not allowed")
    parts = urlsplit(path)
    if parts.scheme or parts.netloc:
        raise refuse("absolute URLs are not allowed")
    segments: list[str] = []
    raw_segments = parts.path.split("/")
    for raw in raw_segments:
        decoded = unquote(raw)
        if decoded in ("", "."):
            continue
        if decoded == "..":
            if not segments:
                raise refuse("'..' would leave the base URL")
            segments.pop()
            continue
        if "/" in decoded or "\\" in decoded:
            raise refuse("encoded slashes are not allowed")
        segments.append(raw)
    url = base_url.rstrip("/")
    if segments:
        url += "/" + "/".join(segments)
    if parts.path.endswith("/") and segments:
        url += "/"
    if parts.query:
        url += "?" + parts.query
    return url


def redact_path(path_url: str, secret_names: frozenset[str]) -> str:
    """`/x?token=abc&q=1` -> `/x?token=REDACTED&q=1`."""
    path, sep, query = path_url.partition("?")
    if not sep:
        return path
    pairs = [(k, "REDACTED" if k.lower() in secret_names else v)
             for k, v in parse_qsl(query, keep_blank_values=True)]
    return f"{path}?{urlencode(pairs, quote_via=quote, safe='')}"


class RequestSpec:
    """What a call asks for, before `requests` prepares it.

    `requests.Session.prepare_request` costs hundreds of microseconds; a cache
    hit or an open breaker must not pay it. The spec gives the cache key and
    the logged path cheaply; the request is only prepared when it is sent.
    """

    __slots__ = ("body_key", "data", "headers", "json", "method", "params", "query", "url", "url_path")

    def __init__(self, method: str, url: str, *, params: Any, headers: dict[str, str], data: Any,
                 json: Any) -> None:
        self.method, self.url, self.params, self.headers = method, url, params, headers
        self.data, self.json = data, json
        self.url_path, _, own_query = url.partition("?")
        own = parse_qsl(own_query, keep_blank_values=True) if own_query else []
        self.query = own + _param_pairs(params)
        self.body_key = _body_key(data, json)

    @property
    def cacheable(self) -> bool:
        return self.body_key is not None

    def path_for_log(self, secret_names: frozenset[str]) -> str:
        path = "/" + self.url_path.split("://", 1)[-1].partition("/")[2]
        if not self.query:
            return path
        return redact_path(f"{path}?{urlencode(self.query, quote_via=quote, safe='')}", secret_names)

    def cache_key(self, upstream: str, vary: tuple[str, ...]) -> str:
        """Method, URL with sorted query, body, varying headers (never credentials:
        they are added after this, to the prepared request only)."""
        digest = hashlib.sha256()
        for piece in (self.method, self.url_path, urlencode(sorted(self.query))):
            digest.update(piece.encode() + b"\0")
        digest.update(self.body_key or b"")
        if vary:
            lowered = {k.lower(): v for k, v in self.headers.items()}
            for header in vary:
                digest.update(f"\0{header}={lowered.get(header, '')}".encode())
        return f"http:{upstream}:{digest.hexdigest()}"

    def light_request(self) -> requests.PreparedRequest:
        """A PreparedRequest for responses that never went out (cache, stale)."""
        prepared = requests.PreparedRequest()
        prepared.method = self.method
        prepared.url = self.url_path + (f"?{urlencode(self.query)}" if self.query else "")
        prepared.headers = CaseInsensitiveDict(self.headers)
        return prepared


def _param_pairs(params: Any) -> list[tuple[str, str]]:
    """Query pairs the way requests encodes `params` (None values dropped)."""
    if not params:
        return []
    if isinstance(params, (str, bytes)):
        text = params.decode() if isinstance(params, bytes) else params
        return parse_qsl(text, keep_blank_values=True)
    items = params.items() if hasattr(params, "items") else params
    pairs: list[tuple[str, str]] = []
    for key, value in items:
        values = value if isinstance(value, (list, tuple)) else [value]
        pairs.extend((str(key), str(v)) for v in values if v is not None)
    return pairs


def _body_key(data: Any, json_body: Any) -> bytes | None:
    """Canonical bytes of a body for the cache key; None when it cannot be keyed
    (files, generators: such calls are never cached)."""
    if json_body is not None:
        return b"json:" + json_module.dumps(json_body, sort_keys=True, separators=(",", ":"),
                                            default=str).encode()
    if data is None:
        return b""
    if isinstance(data, bytes):
        return b"raw:" + data
    if isinstance(data, str):
        return b"raw:" + data.encode()
    if isinstance(data, dict):
        return b"form:" + urlencode(sorted(_param_pairs(data))).encode()
    return None


# -- responses ----------------------------------------------------------------------
def wall_clock() -> float:
    """Wall time for cache-entry expiry (shared across processes); a test seam."""
    return time.time()


def _entry_from(response: requests.Response, ttl: int) -> dict[str, Any]:
    return {
        "status": response.status_code,
        "reason": response.reason,
        "headers": {k: v for k, v in response.headers.items() if k.lower() not in UNCACHED_HEADERS},
        "body": response.content,
        "url": response.url,
        "expires": wall_clock() + ttl,
    }


def _response_from(entry: dict[str, Any], request: requests.PreparedRequest) -> requests.Response:
    response = requests.Response()
    response.status_code = entry["status"]
    response.reason = entry["reason"]
    response.headers = CaseInsensitiveDict(entry["headers"])
    response._content = entry["body"]
    response._content_consumed = True
    response.url = entry["url"]
    response.encoding = requests.utils.get_encoding_from_headers(response.headers)
    response.request = request
    return response


def _mark(response: requests.Response, *, from_cache: bool, stale: bool, attempts: int,
          shared: bool = False) -> requests.Response:
    response.from_cache = from_cache  # type: ignore[attr-defined]
    response.stale = stale  # type: ignore[attr-defined]
    response.attempts = attempts  # type: ignore[attr-defined]
    response.shared = shared  # type: ignore[attr-defined]
    return response


# -- breaker listeners -------------------------------------------------------------
class BreakerEventListener(BreakerLogListener):
    """Logs the change, stores a BreakerEvent and sends `breaker_state_changed`."""

    def state_change(self, cb: Any, old_state: Any, new_state: Any) -> None:
        super().state_change(cb, old_state, new_state)
        old = getattr(cb, "_from", None) or getattr(old_state, "name", "")
        try:
            BreakerEvent.objects.create(upstream=cb.name, from_state=old or "", to_state=new_state.name,
                                        reason=getattr(cb, "_reason", "")[:200])
        except Exception:  # the event is a record, never a reason to fail a call
            logger.warning("breaker %s: could not store the state change", cb.name, exc_info=True)
        breaker_state_changed.send(sender=SharedBreaker, upstream=cb.name, old=old, new=new_state.name)


# -- the client -----------------------------------------------------------------------
@dataclass
class _Built:
    """Everything built from one policy version."""

    policy: Policy
    session: requests.Session
    breaker: SharedBreaker | None
    version: Any
    updated_at: Any


class _Call:
    """One logical call as it happens; queued as is for the call log (the
    writer thread turns it into a row) and sent with `call_completed`."""

    __slots__ = ("_path", "attempts", "breaker_state", "cache_hit", "created", "error", "latency_ms",
                 "method", "outcome", "request_id", "retries", "secret_names", "spec", "started", "status",
                 "upstream")

    def __init__(self, upstream: str, method: str, path: str) -> None:
        self.upstream, self.method, self._path = upstream, method, path
        self.spec: RequestSpec | None = None
        self.secret_names: frozenset[str] = SECRET_PARAMS
        self.started = time.perf_counter()
        self.status: int | None = None
        self.outcome = Outcome.OK
        self.attempts = 0
        self.retries: list[dict[str, Any]] = []
        self.cache_hit = False
        self.breaker_state = ""
        self.error = ""

    def finish(self) -> None:
        self.latency_ms = round((time.perf_counter() - self.started) * 1000, 3)
        self.created = time.time()
        self.request_id = current_request_id.get() or ""
        call_log_record(self)
        call_completed.send(sender=UpstreamClient, call=self)

    @property
    def path(self) -> str:
        """Path and query as logged, secrets redacted (computed when first read:
        by the writer thread, off the hot path)."""
        if self.spec is not None:
            self._path, self.spec = self.spec.path_for_log(self.secret_names), None
        return self._path

    def as_row(self) -> dict[str, Any]:
        """The CallLog fields (built by the writer, off the hot path)."""
        return {
            "created_at": datetime.fromtimestamp(self.created, UTC), "upstream": self.upstream,
            "method": self.method, "path": self.path[:1000], "status": self.status,
            "outcome": str(self.outcome), "latency_ms": self.latency_ms, "attempts": self.attempts,
            "retries": self.retries, "cache_hit": self.cache_hit, "breaker_state": self.breaker_state,
            "request_id": self.request_id, "error": self.error[:500],
        }


class NearCache:
    """A small per-process copy of hot response entries in front of Redis.

    A hit on Redis costs a network round trip; a hot entry is kept here for at
    most `HTTP_CACHE_NEAR_SECONDS` (and never past its own TTL). The price: a
    clear made by another process is seen here up to that long after (this
    process's clears empty it at once). Unused when the cache is local memory.
    """

    def __init__(self, max_entries: int = 512) -> None:
        self._entries: OrderedDict[str, tuple[float, dict[str, Any]]] = OrderedDict()
        self._lock = threading.Lock()
        self.max_entries = max_entries

    def get(self, key: str) -> dict[str, Any] | None:
        found = self._entries.get(key)
        if found is None:
            return None
        if found[0] <= time.monotonic():
            with self._lock:
                self._entries.pop(key, None)
            return None
        return found[1]

    def put(self, key: str, entry: dict[str, Any], seconds: float) -> None:
        with self._lock:
            self._entries[key] = (time.monotonic() + seconds, entry)
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


class UpstreamClient:
    """Process-wide client for one upstream (thread-safe). Get it with
    `resilience.upstream(name)`; never construct one per call."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._lock = threading.Lock()
        self._flight = SingleFlight()
        self.near = NearCache()
        self._built = self._build(self._load())
        self._checked_at = time.monotonic()

    # -- policy, live ------------------------------------------------------------------
    def _load(self) -> tuple[Upstream, Any]:
        version = default_cache().get(_version_key(self.name))
        try:
            row = Upstream.objects.get(name=self.name)
        except Upstream.DoesNotExist:
            raise errors.UnknownUpstream(f"no upstream named {self.name!r}", upstream=self.name) from None
        return row, version

    def _build(self, loaded: tuple[Upstream, Any]) -> _Built:
        row, version = loaded
        policy = Policy.from_model(row)
        session = requests.Session()
        session.trust_env = False  # no proxies or .netrc credentials from the environment
        adapter = HTTPAdapter(pool_connections=1, pool_maxsize=policy.pool_size,
                              max_retries=policy.build_retry(), pool_block=False)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        breaker = None
        if policy.breaker_enabled:
            breaker = SharedBreaker(
                policy.name, fail_max=policy.breaker_fail_max,
                reset_timeout=policy.breaker_reset_timeout,
                success_threshold=policy.breaker_success_threshold,
                half_open_max=policy.breaker_half_open_max, probe_ttl=policy.deadline + 1,
                listeners=[BreakerEventListener()],
            )
        return _Built(policy=policy, session=session, breaker=breaker, version=version,
                      updated_at=row.updated_at)

    def _current(self) -> _Built:
        built = self._built
        now = time.monotonic()
        if now - self._checked_at < resilience_settings.POLICY_CHECK_INTERVAL:
            return built
        with self._lock:
            if now - self._checked_at < resilience_settings.POLICY_CHECK_INTERVAL:
                return self._built
            self._checked_at = now
            if getattr(default_cache(), "in_fallback", False):
                # Other workers' version bumps went to Redis; ask the database.
                stale = Upstream.objects.filter(name=self.name).values_list("updated_at", flat=True).first()
                changed = stale != built.updated_at
            else:
                changed = default_cache().get(_version_key(self.name)) != built.version
            if changed:
                self._built = self._build(self._load())
                self.near.clear()  # a new TTL or cache policy applies from now on
                logger.info("upstream %s: policy reloaded", self.name)
            return self._built

    @property
    def policy(self) -> Policy:
        return self._current().policy

    @property
    def breaker(self) -> SharedBreaker | None:
        return self._current().breaker

    # -- public API ---------------------------------------------------------------------
    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("GET", path, **kwargs)

    def head(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("HEAD", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("POST", path, **kwargs)

    def put(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("PUT", path, **kwargs)

    def patch(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("PATCH", path, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("DELETE", path, **kwargs)

    def request(self, method: str, path: str, *, params: Any = None, headers: dict[str, str] | None = None,
                data: Any = None, json: Any = None, cache: bool | None = None, stream: bool = False,
                raise_for_status: bool = True) -> requests.Response:
        """Call the upstream. See the module docstring for the steps.

        `cache=False` bypasses the response cache (and single-flight);
        `stream=True` returns before the body is read (never cached; the caller
        closes it); `raise_for_status=False` returns 4xx/5xx responses instead
        of raising `UpstreamHTTPError` (they still count as the policy says).
        """
        built = self._current()
        policy = built.policy
        method = method.upper()
        call = _Call(self.name, method, "")
        try:
            try:
                if not policy.enabled:
                    raise errors.UpstreamDisabled(f"upstream {self.name!r} is disabled", upstream=self.name)
                url = join_url(policy.base_url, path, upstream=self.name)
            except errors.UpstreamError as err:
                call.outcome, call.error = Outcome.REFUSED, err.message
                call._path = redact_path(str(path)[:200], self._secret_names(policy))
                raise
            merged = {**policy.default_headers, **headers} if headers else policy.default_headers
            spec = RequestSpec(method, url, params=params, headers=merged, data=data, json=json)
            call.spec, call.secret_names = spec, self._secret_names(policy)
            cacheable = (policy.cache_ttl > 0 and method in policy.cache_methods
                         and cache is not False and not stream and spec.cacheable)
            if not cacheable:
                return self._fetch(built, spec, call, stream=stream, raise_for_status=raise_for_status)
            return self._cached_fetch(built, spec, call, raise_for_status)
        except errors.UpstreamError as err:
            if call.outcome == Outcome.OK:  # failed before or outside _fetch (config, shared failure)
                call.outcome, call.error = _outcome_for(err), err.message
            raise
        finally:
            call.finish()

    # -- steps ----------------------------------------------------------------------------
    def _cached_fetch(self, built: _Built, spec: RequestSpec, call: _Call,
                      raise_for_status: bool) -> requests.Response:
        policy = built.policy
        key = spec.cache_key(self.name, policy.cache_vary_headers)
        store = default_cache()
        near_seconds = (resilience_settings.HTTP_CACHE_NEAR_SECONDS
                        if getattr(store, "backend_name", "") == "redis" else 0)
        entry = self.near.get(key) if near_seconds else None
        if entry is None:
            entry = store.get(key)
        now = wall_clock()
        if entry is not None and entry["expires"] > now:
            if near_seconds:
                self.near.put(key, entry, min(near_seconds, entry["expires"] - now))
            call.outcome, call.cache_hit, call.status = Outcome.CACHE_HIT, True, entry["status"]
            return _mark(_response_from(entry, spec.light_request()), from_cache=True, stale=False,
                         attempts=0)
        stale_entry = entry if policy.cache_serve_stale else None

        def fetch() -> dict[str, Any]:
            response = self._fetch(built, spec, call, stream=False, raise_for_status=raise_for_status,
                                   stale_entry=stale_entry)
            if getattr(response, "stale", False):
                return {"stale_response": response}
            if 200 <= response.status_code < 300:
                fresh = _entry_from(response, policy.cache_ttl)
                keep = policy.cache_ttl + (policy.cache_stale_max_age if policy.cache_serve_stale else 0)
                default_cache().set(key, fresh, timeout=keep)
            return {"response": response, "attempts": response.attempts}

        if not policy.single_flight:
            return fetch()["response"]

        def stored() -> dict[str, Any] | None:
            found = default_cache().get(key)
            return {"entry": found} if found is not None and found["expires"] > wall_clock() else None

        # Across processes only while Redis serves: local memory is this process's alone.
        across = stored if getattr(store, "backend_name", "") == "redis" else None
        try:
            result, shared = self._flight.run(key, fetch, wait=policy.deadline, shared_result=across)
        except FutureTimeout:
            raise errors.UpstreamTimeout(f"{self.name}: deadline passed waiting for a shared call",
                                         upstream=self.name) from None
        if "stale_response" in result:
            if shared:
                call.outcome, call.cache_hit = Outcome.STALE, True
            return result["stale_response"]
        if not shared:
            return result["response"]
        # Another caller made the request: answer from its result.
        source = result.get("entry") or _entry_from(result["response"], policy.cache_ttl)
        call.outcome, call.cache_hit, call.status = Outcome.SHARED, True, source["status"]
        response = _response_from(source, spec.light_request())
        if raise_for_status and response.status_code >= 400:
            raise errors.UpstreamHTTPError(f"{self.name} answered {response.status_code}",
                                           upstream=self.name, response=response)
        return _mark(response, from_cache=True, stale=False, attempts=0, shared=True)

    def _fetch(self, built: _Built, spec: RequestSpec, call: _Call, *, stream: bool,
               raise_for_status: bool, stale_entry: dict[str, Any] | None = None) -> requests.Response:
        """One logical upstream call through the breaker and the retrying adapter."""
        policy, breaker = built.policy, built.breaker
        secret = self._secret(policy)  # before admission: a misconfiguration takes no probe slot
        admission = None
        if breaker is not None:
            try:
                admission = breaker.admit()
            except CircuitOpen as err:
                call.breaker_state = "open"
                failure: errors.UpstreamError = errors.BreakerOpen(
                    f"circuit breaker for {self.name!r} is open", upstream=self.name,
                    retry_after=err.retry_after)
                call.outcome, call.error = Outcome.BREAKER_OPEN, failure.message
                return self._stale_or_raise(failure, stale_entry, spec, call)
            call.breaker_state = admission.state

        try:
            prepared = built.session.prepare_request(requests.Request(
                spec.method, spec.url, params=spec.params, headers=spec.headers, data=spec.data,
                json=spec.json))
            self._authorize(prepared, policy, secret)
        except BaseException as exc:  # a bad body, say: nothing was sent, nothing to count
            if breaker is not None and admission is not None and admission.probe:
                breaker.storage.release_probe()
            if isinstance(exc, errors.UpstreamError):
                raise
            raise errors.UpstreamError(f"{self.name}: could not build the request ({exc})",
                                       upstream=self.name) from exc

        trace = Trace(deadline=time.monotonic() + policy.deadline)
        token = current_trace.set(trace)
        try:
            response = built.session.send(
                prepared, stream=True, allow_redirects=False, verify=True,
                timeout=DeadlineTimeout(policy.connect_timeout, policy.read_timeout, trace.deadline))
            if not stream:
                self._read_body(response, trace)
        except Exception as exc:
            failure = self._classify(exc, trace)
            call.attempts = max(1, len(trace.history))
            call.retries = trace.history
            call.outcome = (Outcome.TIMEOUT if isinstance(failure, errors.UpstreamTimeout)
                            else Outcome.CONNECTION_ERROR)
            call.error = failure.message
            if breaker is not None and admission is not None:
                breaker.record_failure(admission, exc)
            return self._stale_or_raise(failure, stale_entry, spec, call, cause=exc)
        finally:
            current_trace.reset(token)

        status = response.status_code
        retryable = status in policy.retry_statuses and method_retryable(policy, prepared.method)
        call.attempts = len(trace.history) + (0 if retryable and trace.history else 1)
        call.retries = trace.history
        call.status = status
        upstream_failed = status >= 500 or (retryable and bool(trace.history))
        if breaker is not None and admission is not None:
            if upstream_failed:
                breaker.record_failure(admission, errors.UpstreamHTTPError(
                    f"status {status}", upstream=self.name, response=response))
            else:
                breaker.record_success(admission)
        if status < 400:
            return _mark(response, from_cache=False, stale=False, attempts=call.attempts)

        call.outcome = Outcome.HTTP_ERROR
        if retryable and trace.history:
            failure = errors.RetriesExhausted(
                f"{self.name}: still {status} after {call.attempts} attempts", upstream=self.name,
                last_status=status, response=response, retry_after=_retry_after(response))
        else:
            failure = errors.UpstreamHTTPError(f"{self.name} answered {status}", upstream=self.name,
                                               response=response)
        call.error = failure.message
        if upstream_failed and stale_entry is not None:
            return self._stale_or_raise(failure, stale_entry, spec, call)
        if not raise_for_status:
            return _mark(response, from_cache=False, stale=False, attempts=call.attempts)
        raise failure

    def _stale_or_raise(self, failure: errors.UpstreamError, stale_entry: dict[str, Any] | None,
                        spec: RequestSpec, call: _Call,
                        cause: BaseException | None = None) -> requests.Response:
        if stale_entry is None:
            raise failure from cause
        call.outcome, call.cache_hit, call.status = Outcome.STALE, True, stale_entry["status"]
        logger.debug("upstream %s: serving stale copy after %s", self.name, failure.code)
        response = _response_from(stale_entry, spec.light_request())
        return _mark(response, from_cache=True, stale=True, attempts=call.attempts)

    @staticmethod
    def _read_body(response: requests.Response, trace: Trace) -> None:
        """Read the body within the deadline: a dribbling body cannot stall us.

        `read1` returns whatever has arrived instead of waiting for a full
        chunk, and before each read the socket timeout is cut to the time left.
        """
        raw = response.raw
        sock = getattr(getattr(raw, "_connection", None), "sock", None)
        chunks = []
        try:
            while True:
                remaining = trace.remaining()
                if remaining <= 0:
                    raise DeadlineExceeded(0.0, remaining)
                if sock is not None:
                    sock.settimeout(min(remaining, sock.gettimeout() or remaining))
                chunk = raw.read1(BODY_CHUNK, decode_content=True)
                if not chunk:
                    break
                chunks.append(chunk)
        except BaseException:
            response.close()
            raise
        response._content = b"".join(chunks)
        response._content_consumed = True
        raw.release_conn()  # back to the pool for the next call

    def _classify(self, exc: BaseException, trace: Trace) -> errors.UpstreamError:
        """Turn a requests/urllib3 failure into the UpstreamError kind it is."""
        name, tries = self.name, len(trace.history)
        if isinstance(exc, DeadlineExceeded) or trace.remaining() <= 0:
            return errors.UpstreamTimeout(f"{name}: deadline of the call exceeded ({exc})", upstream=name)
        reason: Any = exc
        if isinstance(exc, requests.RequestException) and exc.args:
            reason = getattr(exc.args[0], "reason", exc.args[0])
        if isinstance(reason, MaxRetryError):
            reason = reason.reason
        # NewConnectionError subclasses ConnectTimeoutError (urllib3 history): a refusal is no timeout.
        timed_out = not isinstance(reason, NewConnectionError) and (
            isinstance(exc, requests.Timeout) or isinstance(reason, (ReadTimeoutError, ConnectTimeoutError)))
        if timed_out:
            return errors.UpstreamTimeout(f"{name}: timed out after {max(tries, 1)} attempt(s)",
                                          upstream=name)
        described = type(reason).__name__
        if tries > 1:
            return errors.RetriesExhausted(f"{name}: connection failed after {tries} attempts ({described})",
                                           upstream=name, last_error=described)
        return errors.UpstreamConnectionError(f"{name}: connection failed ({described})", upstream=name)

    # -- credentials ------------------------------------------------------------------------
    def _secret_names(self, policy: Policy) -> frozenset[str]:
        if policy.auth_kind == Upstream.AuthKind.QUERY and policy.auth_name:
            return SECRET_PARAMS | {policy.auth_name.lower()}
        return SECRET_PARAMS

    def _secret(self, policy: Policy) -> str:
        if policy.auth_kind == Upstream.AuthKind.NONE:
            return ""
        secret = os.environ.get(policy.auth_env_var, "")
        if not secret:
            raise errors.UpstreamError(
                f"credentials for {self.name!r} are not configured (environment variable "
                f"{policy.auth_env_var} is empty)", upstream=self.name)
        return secret

    @staticmethod
    def _authorize(prepared: requests.PreparedRequest, policy: Policy, secret: str) -> None:
        if policy.auth_kind == Upstream.AuthKind.BEARER:
            prepared.headers["Authorization"] = f"Bearer {secret}"
        elif policy.auth_kind == Upstream.AuthKind.HEADER:
            prepared.headers[policy.auth_name] = secret
        elif policy.auth_kind == Upstream.AuthKind.QUERY:
            prepared.prepare_url(prepared.url, {policy.auth_name: secret})


def _outcome_for(err: errors.UpstreamError) -> Outcome:
    if isinstance(err, errors.BreakerOpen):
        return Outcome.BREAKER_OPEN
    if isinstance(err, errors.UpstreamTimeout):
        return Outcome.TIMEOUT
    # (a Response is falsy when its status is an error: compare with None)
    if isinstance(err, (errors.UpstreamHTTPError, errors.RetriesExhausted)) \
            and getattr(err, "response", None) is not None:
        return Outcome.HTTP_ERROR
    if isinstance(err, (errors.UpstreamConnectionError, errors.RetriesExhausted)):
        return Outcome.CONNECTION_ERROR
    return Outcome.REFUSED


def method_retryable(policy: Policy, method: str | None) -> bool:
    return (method or "").upper() in policy.retry_methods


def _retry_after(response: requests.Response) -> float | None:
    value = response.headers.get("Retry-After", "")
    return float(value) if value.strip().isdigit() else None


# -- registry -----------------------------------------------------------------------------
_clients: dict[str, UpstreamClient] = {}
_clients_lock = threading.Lock()


def upstream_client(name: str) -> UpstreamClient:
    """The process-wide client for `name` (raises UnknownUpstream)."""
    client = _clients.get(name)
    if client is None:
        with _clients_lock:
            client = _clients.get(name)
            if client is None:
                client = _clients[name] = UpstreamClient(name)
    return client


def near_caches_clear() -> None:
    """Empty every client's near cache in this process (after clearing `http`)."""
    for client in list(_clients.values()):
        client.near.clear()


def reset_clients() -> None:
    """Forget every client (tests; the next call rebuilds from the database)."""
    with _clients_lock:
        _clients.clear()
