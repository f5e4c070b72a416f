"""The sync transport: one pooled `requests.Session` per upstream, urllib3
driving the policy's retries, every wait bounded by the call's deadline.

Pool overflow: the adapter's pools block (`pool_block=True`). A call beyond
`pool_size` waits for a connection to come back, for at most the time left
before its deadline, then fails as `PoolExhausted` (local; never counted
against the breaker). The alternative, opening overflow connections and
dropping them on release, churns sockets under load and was the root of the
old failures: the body reader kept setting timeouts on a socket that urllib3
had already closed on release ("Connection pool is full, discarding
connection" followed by EBADF). The reader now asks the response for its
live connection before each read.
"""
from __future__ import annotations

import requests
from requests.adapters import HTTPAdapter
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from resilience.client.credentials import Credentials
from resilience.client.policy import (
    MIN_TIMEOUT,
    DeadlineExceeded,
    Policy,
    Trace,
    attempt_timeout,
    current_trace,
)
from resilience.client.responses import UpstreamResponse
from resilience.client.spec import RequestSpec

BODY_CHUNK = 64 * 1024


class _DeadlineWaits:
    """Waits for a pooled connection no longer than the call's deadline."""

    def _get_conn(self, timeout: float | None = None):  # type: ignore[no-untyped-def]
        trace = current_trace.get()
        if trace is not None:
            left = max(MIN_TIMEOUT, trace.remaining())
            timeout = left if timeout is None else min(timeout, left)
        return super()._get_conn(timeout=timeout)  # type: ignore[misc]


class DeadlineHTTPConnectionPool(_DeadlineWaits, HTTPConnectionPool):
    pass


class DeadlineHTTPSConnectionPool(_DeadlineWaits, HTTPSConnectionPool):
    pass


class PooledAdapter(HTTPAdapter):
    """requests' adapter with blocking, deadline-bounded pools whose
    responses are `UpstreamResponse`s."""

    def init_poolmanager(self, connections, maxsize, block=True, **pool_kwargs):  # type: ignore[no-untyped-def]
        super().init_poolmanager(connections, maxsize, block=True, **pool_kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": DeadlineHTTPConnectionPool,
                                                   "https": DeadlineHTTPSConnectionPool}

    def build_response(self, req, resp):  # type: ignore[no-untyped-def]
        response = super().build_response(req, resp)
        # requests' intended hook for its response class: same layout, our meta and close().
        response.__class__ = UpstreamResponse
        return response


def session_build(policy: Policy) -> requests.Session:
    session = requests.Session()
    session.trust_env = False  # no proxies or .netrc credentials from the environment
    adapter = PooledAdapter(pool_connections=1, pool_maxsize=policy.pool_size,
                            max_retries=policy.build_retry(), pool_block=True)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


#: requests' default headers (User-Agent, Accept-Encoding, Accept, Connection).
DEFAULT_HEADERS = dict(requests.utils.default_headers())


def prepare(spec: RequestSpec, credentials: Credentials) -> requests.PreparedRequest:
    """The request as sent. Prepared on its own, not merged with session
    state: a client shared by every caller keeps no cookies from one call to
    the next (nor env auth: `trust_env` is off), which also spares requests'
    per-call merging of session settings."""
    prepared = requests.PreparedRequest()
    prepared.prepare(method=spec.method, url=spec.url, headers={**DEFAULT_HEADERS, **spec.headers},
                     params=spec.params, data=spec.data, json=spec.json)
    credentials.apply(prepared)
    return prepared


def send(session: requests.Session, policy: Policy, spec: RequestSpec, credentials: Credentials,
         trace: Trace, *, stream: bool) -> UpstreamResponse:
    """Send one logical request (urllib3 retries inside) and, unless the caller
    streams a successful answer, read its body within the deadline. Raises
    what requests/urllib3 raise, or `DeadlineExceeded`; the caller classifies."""
    prepared = prepare(spec, credentials)
    token = current_trace.set(trace)
    try:
        response = session.send(
            prepared, stream=True, allow_redirects=False, verify=True,
            timeout=attempt_timeout(policy, trace, stream=stream))
        if not stream or response.status_code >= 400:
            read_body(response, trace)
    finally:
        current_trace.reset(token)
    return response  # type: ignore[return-value]


def read_body(response: requests.Response, trace: Trace) -> None:
    """Read the body within the deadline: a dribbling body cannot stall us.

    `read1` returns whatever has arrived instead of waiting for a full chunk,
    and before each read the socket timeout is cut to the time left. The
    connection is asked for afresh each time: the read that reaches the end
    releases it to the pool, which may close it.
    """
    raw = response.raw
    chunks = []
    try:
        while True:
            remaining = trace.remaining()
            if remaining <= 0:
                raise DeadlineExceeded(0.0, remaining)
            connection = raw.connection
            sock = getattr(connection, "sock", None) if connection is not None else None
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

