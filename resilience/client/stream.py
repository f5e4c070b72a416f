"""The stream supervisor: one streamed answer that survives its provider.

This module owns what happens after a provider said 200 on a stream: the
event model (`StreamEvent`), reading server-sent events (`SSEReader`), the
timers, and the continuation loop (`SupervisedStream`). It is independent
of any wire format: a `WireCodec` (resilience.client.openai_wire for OpenAI
chat completions) parses the provider's events and builds continuation
bodies; the front doors render the events in their caller's own format.
With a wire bridge (resilience.client.wires) an attempt may go to an
endpoint of another format: it is parsed with that format's codec (one
parser per attempt, `for_attempt()`), its events carry no `raw` bytes, and
continuations are built in the caller's format and translated like any
attempt.

A streamed attempt is a failure until it ends cleanly. Timers, from the
policy (each 0 means "the read timeout"):

- `first_token_timeout`: from sending an attempt to its first content event
  (text or the final chunk); until text has reached the caller, also
  bounded by the call's `deadline` (counted from the first send);
- `stream_idle_timeout`: the longest silence between events after that;
- `stream_max_seconds`: the whole stream, continuations included (a cap:
  past it the stream ends with an error, it is not continued).

An attempt breaks when its connection is cut before the final chunk, when a
timer above runs out, or when the provider sends an error event. The broken
attempt is closed as a failure of its endpoint (breaker, score, call-log row
with its outcome; resilience.client.attempt settles a stream when it closes),
and the answer goes on, up to `retry_total` times, on another endpoint
when one is available (else the same one):

- nothing reached the caller yet: the request is simply sent again;
- text reached the caller: the request plus the text so far as an assistant
  prefill (`WireCodec.continuation`); the continuation's text follows;
- an endpoint that answers a prefill with a 400 naming it is remembered
  (shared cache key `stream:<upstream>:noprefill:<endpoint>`, for
  `PREFILL_REFUSAL_TTL`, read by every worker) and the answer is restarted
  there instead: when the restarted text begins with what the caller already
  has, that prefix is dropped and the rest sent (a splice); when it does not,
  the stream ends with `StreamInterrupted` naming the original failure.

A request for the final usage event that the gateway added for its own
ledger (the caller did not ask: `optional_usage`, OpenAI's
`stream_options.include_usage`) is not worth a refused stream: an endpoint
that answers it with a 400 naming the option is remembered (its name in
the shared cache key `stream:<upstream>:nousage`, for `PREFILL_REFUSAL_TTL`) and
the attempt is sent once more to that endpoint without it. While any
endpoint of the upstream is known to refuse it, streams are sent without it
from the start (which endpoint an attempt goes to is chosen later, by the
client: one refused round trip per stream would cost more than the usage
event). Such a stream ends with no `usage`. A caller that asked for the usage
itself gets the provider's refusal as it is.

Only text is continued: once an event the codec marks `opaque` (OpenAI: a
tool call, a second choice) has reached the caller, a break ends the stream
with `StreamInterrupted`.

`batches()` gives the same events grouped by the provider's reads: the
events parsed from one read come as one list, so a front door writes them to
its caller at once (one socket write, not one per event). `ending` tells
that what has been handed over ends the answer: the attempt's end marker came
and its body has arrived, so the stream ends without waiting on the network.

Malformed events (not JSON, not SSE) are skipped and counted. A stream that
ends at the HTTP level after its final chunk but without `[DONE]` is complete;
one whose connection stays open after the final chunk (and usage, when asked
for) is finished after `FINISH_GRACE` seconds.

Counts per attempt (`cut`, `timeout_first_token`, `timeout_idle`,
`timeout_max`, `error_event`, `failover`, `continuation`, `restart`,
`splice`, `skipped`, `no_done`) go on the attempt's call record, so the
rollups (per endpoint, `stream_<name>` signals) and the metrics count them.

Where the state lives: all of a stream's state is this object's, in the
task that serves it (text so far, counts, the open attempt); the only shared
state is the prefill and usage-option refusals per endpoint, and the breakers and cooldowns
the client keeps.

On failure: `start()` raises the client's `UpstreamError` kinds (nothing was
sent) or returns the provider's error answer; iterating raises
`StreamInterrupted` (or `UpstreamTimeout` for `stream_max_seconds`) once
the answer cannot go on. Closing the stream early closes the open attempt.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any, Protocol

import httpx2
import orjson

from resilience import exceptions as errors
from resilience.cache import cache_is_shared, default_cache

logger = logging.getLogger(__name__)

#: Seconds a stream whose final chunk came may stay open before it is finished for it.
FINISH_GRACE = 0.25
#: Seconds an endpoint's refusal of prefills is remembered, across workers.
PREFILL_REFUSAL_TTL = 24 * 3600
#: Bytes of one event kept while waiting for its end; past it the event is skipped.
MAX_EVENT_BYTES = 1 << 20


@dataclass(frozen=True, slots=True)
class StreamEvent:
    """One provider event, as every front door reads it.

    `text`: the answer's text in it; `finish_reason` when it is the final
    chunk; `usage` (prompt, completion, total tokens) when it carries them;
    `data` the provider's event as parsed, and `raw` as it was sent (a front
    door of the same wire format can pass it on unchanged); `attempt` the
    attempt it came from (0: the first); `spliced` when `text` is the rest of
    a restarted answer (its `raw` no longer matches it)."""

    text: str = ""
    finish_reason: str | None = None
    usage: dict[str, Any] | None = None
    data: Any = None
    raw: bytes = b""
    attempt: int = 0
    spliced: bool = False
    error: str | None = None
    #: It carries what a continuation cannot rebuild (a tool call, a second choice): once one
    #: reached the caller, a break ends the stream with an error instead of a continuation.
    opaque: bool = False

    @property
    def content(self) -> bool:
        """Whether the event carries the answer (text or its end)."""
        return bool(self.text) or self.finish_reason is not None


class WireCodec(Protocol):
    """A provider's stream wire format."""

    def for_attempt(self) -> WireCodec:
        """The parser of one attempt's events (itself when the format needs no state)."""

    def parse(self, data: bytes) -> StreamEvent | None:
        """The event of one SSE `data` payload; None when it is malformed."""

    def is_done(self, data: bytes) -> bool:
        """Whether the payload is the stream's terminator (`[DONE]`)."""

    def answer_events(self, content: bytes) -> list[StreamEvent] | None:
        """The events of a whole (not streamed) answer to a stream request."""

    def wants_usage(self, body: Any) -> bool:
        """Whether the request asked for a usage event at the end."""

    def continuation(self, body: Any, partial: str) -> Any:
        """The request asking for the rest of an answer that began with `partial`."""

    def refuses_prefill(self, status: int, content: bytes) -> bool:
        """Whether an error answer to a continuation says prefills are refused."""


def json_object(data: bytes) -> dict[str, Any] | None:
    """What every codec's `parse` starts with: `data` as a JSON object, or
    None when it is not JSON or another kind of JSON value. orjson first
    (every chunk of every stream: four times json.loads' speed), json for
    what only it reads (a token split inside a surrogate pair, escaped)."""
    try:
        value = orjson.loads(data)
    except ValueError:
        try:
            value = json.loads(data)
        except ValueError:
            return None
    return value if isinstance(value, dict) else None


def refusal_says(status: int, content: bytes, words: tuple[str, ...]) -> bool:
    """Whether a 400 or 422 answer names one of `words` (a codec's prefill refusal)."""
    if status not in (400, 422):
        return False
    text = content.decode("utf-8", "replace").lower()
    return any(word in text for word in words)


class SSEReader:
    """Server-sent events from a byte stream: the `data` of each event, or
    None for a block that is not SSE. Comments and blank blocks are dropped."""

    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, chunk: bytes) -> list[bytes | None]:
        buffer = self._buffer + chunk if self._buffer else chunk
        if b"\r" in buffer:
            buffer = buffer.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        *blocks, rest = buffer.split(b"\n\n")
        if len(rest) > MAX_EVENT_BYTES:  # no event ends: bounded, and not SSE
            rest = b""
            blocks.append(b"\x00")
        self._buffer = rest
        found: list[bytes | None] = []
        for block in blocks:
            data: list[bytes] = []
            valid = True
            for line in block.split(b"\n"):
                if line.startswith(b"data:"):
                    value = line[5:]
                    data.append(value[1:] if value[:1] == b" " else value)
                elif not line or line.startswith(b":"):
                    continue
                elif not line.startswith((b"event:", b"id:", b"retry:")):
                    valid = False
            if not valid:
                found.append(None)
            elif data:
                found.append(b"\n".join(data))
        return found

    def rest(self) -> bytes:
        """What came after the last complete event (at the end of the body)."""
        return self._buffer


class _Break(Exception):
    """An attempt broke; `failure` says how, `count` is its event name."""

    def __init__(self, failure: errors.UpstreamError, count: str) -> None:
        super().__init__(failure.message)
        self.failure, self.count = failure, count


# -- the prefill refusals, shared like cooldowns ---------------------------------------------
def prefill_refusal_key(upstream: str, endpoint: str) -> str:
    return f"stream:{upstream}:noprefill:{endpoint}"


def prefill_refusal_remember(*, upstream: str, endpoint: str) -> None:
    """Remember, in every worker, that `endpoint` refuses assistant prefills."""
    default_cache().set(prefill_refusal_key(upstream, endpoint), True, timeout=PREFILL_REFUSAL_TTL)
    logger.info("stream: endpoint %r of %s refuses prefills; its continuations restart and splice",
                endpoint, upstream)


def prefill_refusers(*, upstream: str, endpoints: tuple[str, ...]) -> set[str]:
    """Which of `endpoints` are known to refuse prefills (one cache read)."""
    keys = {prefill_refusal_key(upstream, name): name for name in endpoints}
    found = default_cache().get_many(list(keys))
    return {keys[key] for key, value in found.items() if value}


class UsageOption(Protocol):
    """A wire format's request for the final usage event (OpenAI's
    `stream_options.include_usage`), as the supervisor drops it for an endpoint
    that refuses it."""

    def refused(self, status: int, content: bytes) -> bool:
        """Whether an error answer says the option is refused (a 400 naming it)."""

    def asked(self, body: Any) -> bool:
        """Whether `body` carries the option."""

    def dropped(self, body: Any) -> Any:
        """`body` without the option."""


def usage_refusal_key(upstream: str) -> str:
    return f"stream:{upstream}:nousage"


def usage_refusal_remember(*, upstream: str, endpoint: str) -> None:
    """Remember, in every worker, that `endpoint` refuses the usage option.
    Two workers learning two endpoints at the same moment may keep one: the
    other is learned again from its next refusal."""
    cache = default_cache()
    names = set(cache.get(usage_refusal_key(upstream)) or ()) | {endpoint}
    cache.set(usage_refusal_key(upstream), sorted(names), timeout=PREFILL_REFUSAL_TTL)
    logger.info("stream: endpoint %r of %s refuses the usage option; its streams are sent without it",
                endpoint, upstream)


def usage_refusers(*, upstream: str) -> set[str]:
    """The endpoints of `upstream` known to refuse the usage option (one cache
    read, no policy needed: it runs before a stream's first attempt)."""
    return set(default_cache().get(usage_refusal_key(upstream)) or ())


class SupervisedStream:
    """One supervised streamed call (see the module docstring).

        stream = SupervisedStream(client, path="chat/completions", body=body, codec=OPENAI_CHAT)
        refused = await stream.start()   # the provider's error answer, or None
        async for event in stream: ...   # StreamEvent, the answer as one stream
        # or: async for batch in stream.batches(): ...   # the events of each provider read
        await stream.aclose()

    After the iteration: `usage`, `finish_reason`, `model`, `endpoints` (one
    per attempt), `counts` (the stream's events, summed)."""

    #: Test seam: the clock the timers read.
    clock = staticmethod(time.monotonic)

    def __init__(self, client: Any, *, path: str, body: Any, codec: WireCodec,
                 headers: dict[str, str] | None = None, wire: Any = None,
                 optional_usage: UsageOption | None = None) -> None:
        self.client = client
        self.path = path
        self.body = body
        #: The body's usage request is the gateway's, not the caller's: dropped for an endpoint refusing it.
        self.optional_usage = optional_usage
        self.codec = codec
        self.headers = headers
        #: The call's wire bridge (resilience.client.wires): attempts on endpoints of another
        #: format are translated, and their events parsed with that format's codec.
        self.wire = wire
        self._parser: WireCodec = codec  # the open attempt's codec
        self._foreign = False  # the open attempt speaks another format than the caller
        self._wants_usage = False  # the open attempt's request asked for a usage event at the end
        self.usage: dict[str, Any] | None = None
        #: Events read from the provider, every attempt (0: nothing was produced for the caller).
        self.events_read = 0
        self.finish_reason: str | None = None
        self.model: str | None = None
        self.endpoints: list[str] = []
        self.counts: dict[str, int] = {}
        self._policy: Any = None
        self._response: Any = None
        #: What was handed over ends the answer: the open attempt's end marker came and its
        #: body has arrived, so the iteration ends without reading the network again.
        self.ending = False
        self._attempt_counts: dict[str, int] = {}
        self._attempt = -1
        self._sent: list[str] = []
        self._sent_length = 0
        self._splice: list[str] | None = None  # a restart's text held back until it passes the prefix
        self._started = 0.0
        self._sent_at = 0.0
        self._original: errors.UpstreamError | None = None
        self._endpoint_names: tuple[str, ...] = ()
        self._opaque = False

    # -- opening attempts ---------------------------------------------------------------------
    async def start(self) -> Any:
        """Send the first attempt. None when its stream is open; else the
        provider's error answer (status >= 400, body read) for the caller to
        render. Raises the client's `UpstreamError` kinds."""
        self._started = self.clock()
        option = self.optional_usage
        if option is not None and option.asked(self.body) and await _refusers(self.client):
            self.body = option.dropped(self.body)
        response = await self._send(self.body)
        if response.status_code >= 400:
            return response
        # Read once, while the policy is fresh: no policy load on the event loop later on.
        self._policy, self._endpoint_names = self.client.loaded_policy(), self.client.endpoint_names()
        self._open(response, "")
        return None

    async def _send(self, body: Any, *, avoid: str = "", endpoint: str = "") -> Any:
        """One attempt; sent once more without the optional usage request
        (and the refusal remembered) when its endpoint answers 400 naming it."""
        response = await self._post(body, avoid=avoid, endpoint=endpoint)
        option = self.optional_usage
        if option is None or response.status_code != 400 or not option.asked(body):
            return response
        content = await _read_error(response)
        if not option.refused(response.status_code, content):
            return response  # read and closed: its content is still there for the caller
        refusing = response.meta.endpoint
        await _store_read(usage_refusal_remember, upstream=self.client.name, endpoint=refusing)
        _refusers_read.pop(self.client, None)  # this worker's next stream reads them again
        # The stream's count (no attempt is open yet to carry it).
        self.counts["usage_refused"] = self.counts.get("usage_refused", 0) + 1
        if body is self.body:
            self.body = option.dropped(body)  # its continuations go without it too
            return await self._post(self.body, endpoint=refusing)
        return await self._post(option.dropped(body), endpoint=refusing)

    async def _post(self, body: Any, *, avoid: str = "", endpoint: str = "") -> Any:
        self._sent_at = self.clock()
        return await self.client.arequest("POST", self.path, json=body, headers=self.headers, stream=True,
                                          cache=False, raise_for_status=False, avoid=avoid, endpoint=endpoint,
                                          wire=self.wire)

    def _open(self, response: Any, how: str) -> None:
        # The first-token timer counts from the send of the attempt that answered (an attempt
        # before it, timed out on another endpoint, does not shorten it).
        self._sent_at = response.meta.sent_at or self._sent_at
        self._response = response
        self.ending = False
        response.stream_read = 0  # counted by `_delivered`: 0 at its close, it was never read
        self._attempt += 1
        self._attempt_counts = {}
        if how:
            self._count(how)
        self.endpoints.append(response.meta.endpoint)
        self._foreign = self.wire is not None and response.meta.wire != self.wire.format
        self._parser = (self.wire.codec(response.meta.wire) if self._foreign else self.codec).for_attempt()
        sent = self.body
        if self._foreign:  # as the bridge sent it (it may have asked for a usage event the caller did not)
            sent = self.wire.encode(self.body, dict(self.headers or {}), target=response.meta.wire)[1]
        self._wants_usage = self._parser.wants_usage(sent)

    def _count(self, name: str, count: int = 1) -> None:
        self._attempt_counts[name] = self._attempt_counts.get(name, 0) + count
        self.counts[name] = self.counts.get(name, 0) + count

    async def _settle(self, failure: errors.UpstreamError | None) -> None:
        """Close the open attempt with its verdict and its counts."""
        response, self._response = self._response, None
        if response is None:
            return
        response.stream_failure = failure
        response.stream_counts = self._attempt_counts
        if failure is None:
            response.stream_usage = self.usage
        await response.aclose()

    # -- reading ------------------------------------------------------------------------------
    def __aiter__(self) -> AsyncIterator[StreamEvent]:
        return self._events()

    def batches(self) -> AsyncIterator[list[StreamEvent]]:
        """The answer's events, those of each provider read as one list (never empty)."""
        return self._batches()

    async def _events(self) -> AsyncIterator[StreamEvent]:
        async with contextlib.aclosing(self._batches()) as batches:
            async for batch in batches:
                for event in batch:
                    yield event

    async def _batches(self) -> AsyncIterator[list[StreamEvent]]:
        breaks = 0
        try:
            while self._response is not None:
                try:
                    async with contextlib.aclosing(self._read()) as reads:
                        async for read in reads:
                            delivered, failure = self._delivered(read)
                            if delivered:
                                yield delivered
                            if failure is not None:
                                raise failure
                    await self._settle(None)
                    return
                except _Break as broken:
                    self._count(broken.count)
                    self._count("failover")
                    endpoint = self._response.meta.endpoint
                    await self._settle(broken.failure)
                    if self._original is None:
                        self._original = broken.failure
                    logger.debug("stream: %s endpoint %r broke (%s)", self.client.name, endpoint,
                                 broken.failure.message)
                    breaks += 1
                    if broken.count == "timeout_max" or breaks > self._policy.retry_total:
                        raise self._interrupted() from None
                    await self._resume(endpoint)
        finally:
            await self._settle(None)  # the caller stopped reading: not the endpoint's fault

    def _limits(self) -> tuple[float, float, float]:
        """(first token, idle, cap) in seconds, 0 meaning none."""
        policy = self._policy
        return (policy.first_token_timeout or policy.read_timeout,
                policy.stream_idle_timeout or policy.read_timeout, policy.stream_max_seconds)

    def _read(self) -> AsyncIterator[list[StreamEvent]]:
        """The open attempt's events, a list per provider read, until it ends cleanly; `_Break`
        when it breaks."""
        return _AttemptReader(self).events()

    def _delivered(self, read: list[StreamEvent]) -> tuple[list[StreamEvent], errors.UpstreamError | None]:
        """What of one read's events reaches the caller, and the failure that stopped them (what
        came before it still reaches the caller first)."""
        delivered: list[StreamEvent] = []
        for event in read:
            self._response.stream_read += 1
            self.events_read += 1
            try:
                event = self._deliver(event)
            except errors.UpstreamError as failure:
                return delivered, failure
            if event is not None:
                delivered.append(event)
        return delivered, None

    def _deliver(self, event: StreamEvent) -> StreamEvent | None:
        """What of `event` reaches the caller: all of it on the first attempt;
        on a continuation none of its empty openers; on a restart, nothing
        until its text has passed what the caller already has."""
        if isinstance(event.data, dict) and isinstance(event.data.get("model"), str):
            self.model = event.data["model"]
        if self._foreign:  # parsed from another format: its bytes are not the caller's
            event = replace(event, raw=b"")
        if self._attempt:
            if not event.content and event.usage is None:
                return None
            event = StreamEvent(event.text, event.finish_reason, event.usage, event.data, event.raw,
                                self._attempt)
        if self._splice is not None:
            self._splice.append(event.text)
            held = "".join(self._splice)
            sent = "".join(self._sent)
            if len(held) < len(sent) and not event.finish_reason:
                if not sent.startswith(held):
                    raise self._interrupted("the restarted answer differs from the text already sent")
                return None
            if not held.startswith(sent):
                raise self._interrupted("the restarted answer differs from the text already sent")
            self._splice = None
            self._count("splice")
            event = StreamEvent(held[len(sent):], event.finish_reason, event.usage, event.data, b"",
                                self._attempt, spliced=True)
        if event.text:
            self._sent.append(event.text)
            self._sent_length += len(event.text)
        if event.opaque:
            self._opaque = True
        return event

    # -- going on -----------------------------------------------------------------------------
    async def _resume(self, broken: str) -> None:
        """Open the next attempt after `broken` (an endpoint's name) failed."""
        self._splice = None  # a restart that broke before passing the prefix: its text is dropped
        if self._opaque:
            raise self._interrupted("a tool call or a second choice cannot be continued")
        if self.clock() - self._started >= (self._policy.stream_max_seconds or float("inf")):
            raise self._interrupted()
        if not self._sent_length:
            await self._attempt_with(self.body, "restart", avoid=broken)
            return
        others = tuple(n for n in self._endpoint_names if n != broken) or (broken,)
        refusing = prefill_refusers(upstream=self.client.name, endpoints=others)
        if len(refusing) < len(others):
            body = self.codec.continuation(self.body, "".join(self._sent))
            response = await self._send(body, avoid=broken)
            if response.status_code < 400:
                self._open(response, "continuation")
                return
            content = await _read_error(response)
            endpoint = response.meta.endpoint
            if not self.codec.refuses_prefill(response.status_code, content):
                raise self._interrupted()
            prefill_refusal_remember(upstream=self.client.name, endpoint=endpoint)
            self._count("prefill_refused")
            await self._attempt_with(self.body, "restart", endpoint=endpoint)
        else:
            await self._attempt_with(self.body, "restart", avoid=broken)
        self._splice = []

    async def _attempt_with(self, body: Any, how: str, *, avoid: str = "", endpoint: str = "") -> None:
        try:
            response = await self._send(body, avoid=avoid, endpoint=endpoint)
        except errors.UpstreamError:
            raise self._interrupted() from None
        if response.status_code >= 400:
            await response.aclose()
            raise self._interrupted()
        self._open(response, how)

    def _interrupted(self, detail: str = "") -> errors.UpstreamError:
        original = self._original
        if isinstance(original, errors.UpstreamTimeout) and "stream_max_seconds" in original.message:
            return original
        what = original.message if original is not None else "the provider's stream broke"
        message = f"{what}; {detail}" if detail else f"{what}; the answer could not be continued"
        return errors.StreamInterrupted(message, upstream=self.client.name,
                                        cause=original.code if original is not None else "upstream_error")

    async def aclose(self) -> None:
        """Close the open attempt (a no-op once the stream ended)."""
        if self._response is not None:
            await self._settle(None)


@dataclass(slots=True)
class _Progress:
    """How far the open attempt got: what its timers and the end of its stream depend on."""

    events: int = 0
    content: bool = False  # an event with content (text or the final chunk) arrived
    finished: bool = False  # the final chunk (a finish reason) arrived
    done: bool = False  # the codec's end marker (`[DONE]`) arrived


class _AttemptReader:
    """Reads one attempt of a `SupervisedStream`: its events until the attempt ends cleanly, or `_Break`
    naming how it broke. Timers are per read: nothing is awaited under a timer while the caller holds
    an event. Counts and the answer's `usage` and `finish_reason` go onto the stream."""

    def __init__(self, stream: SupervisedStream) -> None:
        self.stream = stream
        self.name = stream.client.name
        self.response = stream._response
        self.first, self.idle, self.cap = stream._limits()
        self.progress = _Progress()

    async def events(self) -> AsyncIterator[list[StreamEvent]]:
        """The events of each read (a read with none gives nothing)."""
        stream = self.stream
        if "json" in self.response.headers.get("content-type", ""):  # the provider ignored "stream": true
            events = await self._whole()
            for event in events:
                if event.finish_reason is not None:
                    stream.finish_reason = event.finish_reason
                if event.usage is not None:
                    stream.usage = event.usage
            yield events
            return
        reader = SSEReader()
        read = self.response.chunk_reader()
        wants_usage = stream._wants_usage
        while True:
            chunk = await self._next_chunk(read, *self._next_wait(wants_usage))
            if chunk is None:
                return
            parsed = self._parse(reader, chunk)
            if self.progress.done:  # nothing after these but the body's end, here already or awaited
                stream.ending = getattr(self.response.stream, "arrived", False)
            if parsed:
                yield parsed
            if self.progress.done:
                await _drain(read)
                return

    def _next_wait(self, wants_usage: bool) -> tuple[float, str]:
        """How long the next read may wait, and the count a timeout there is."""
        stream, progress = self.stream, self.progress
        now = stream.clock()
        if progress.finished and (stream.usage is not None or not wants_usage):
            wait, kind = FINISH_GRACE, "grace"
        elif progress.content:
            wait, kind = self.idle, "timeout_idle"
        else:
            first_at = stream._sent_at + self.first
            if not stream._sent_length:  # nothing reached the caller yet: the call's deadline bounds it
                first_at = min(first_at, stream._started + stream._policy.deadline)
            wait, kind = max(0.0, first_at - now), "timeout_first_token"
        cap_at = stream._started + self.cap if self.cap else None
        if cap_at is not None and now + wait >= cap_at:
            wait, kind = max(0.0, cap_at - now), "timeout_max"
        return wait, kind

    async def _next_chunk(self, read: Callable[[float], Awaitable[bytes]], wait: float,
                          kind: str) -> bytes | None:
        """The next chunk of the body (`read`: the answer's `chunk_reader()`); None when the stream
        ended cleanly (after its final chunk); `_Break` when it was cut or a timer ran out before that."""
        progress, name = self.progress, self.name
        try:
            return await read(wait)
        except TimeoutError:
            if progress.finished:
                self.stream._count("no_done")
                return None
            what = {"timeout_first_token": f"no first token within {self.first:g} s",
                    "timeout_idle": f"silent for {self.idle:g} s after {progress.events} events",
                    "timeout_max": f"stream_max_seconds ({self.cap:g} s) passed"}[kind]
            raise _Break(errors.UpstreamTimeout(f"{name}: {what}", upstream=name), kind) from None
        except StopAsyncIteration:
            if progress.done or progress.finished:
                if not progress.done:
                    self.stream._count("no_done")
                return None
            raise _Break(errors.UpstreamConnectionError(
                f"{name}: stream cut after {progress.events} events (ended before its final chunk)",
                upstream=name), "cut") from None
        except (httpx2.TransportError, OSError) as err:
            if progress.finished:
                self.stream._count("no_done")
                return None
            raise self._transport_break(err) from None

    def _transport_break(self, err: Exception) -> _Break:
        events, name = self.progress.events, self.name
        if isinstance(err, httpx2.TimeoutException):  # the transport's own read timeout
            kind = "timeout_idle" if self.progress.content else "timeout_first_token"
            return _Break(errors.UpstreamTimeout(f"{name}: read timed out after {events} events",
                                                 upstream=name), kind)
        return _Break(errors.UpstreamConnectionError(
            f"{name}: stream cut after {events} events ({type(err).__name__})", upstream=name), "cut")

    def _parse(self, reader: SSEReader, chunk: bytes) -> list[StreamEvent]:
        """The events of `chunk`, all parsed before any is handed on (an error event breaks first)."""
        stream, progress, codec = self.stream, self.progress, self.stream._parser
        parsed: list[StreamEvent] = []
        for data in reader.feed(chunk):
            if data is None:
                stream._count("skipped")
                continue
            if codec.is_done(data):
                progress.done = True
                break
            event = codec.parse(data)
            if event is None:
                stream._count("skipped")
                continue
            if event.error is not None:
                raise _Break(errors.UpstreamError(f"{self.name}: the provider's stream failed: {event.error}",
                                                  upstream=self.name), "error_event")
            progress.events += 1
            if event.content:
                progress.content = True
            if event.finish_reason is not None:
                progress.finished = True
                stream.finish_reason = event.finish_reason
            if event.usage is not None:
                stream.usage = event.usage
            parsed.append(event)
        return parsed

    async def _whole(self) -> list[StreamEvent]:
        """The events of an answer that came whole (JSON, not a stream), read within the first-token timer."""
        stream, name = self.stream, self.name
        try:
            async with asyncio.timeout(max(0.0, stream._sent_at + self.first - stream.clock())):
                content = await self.response.aread()
        except TimeoutError:
            raise _Break(errors.UpstreamTimeout(f"{name}: no answer within {self.first:g} s", upstream=name),
                         "timeout_first_token") from None
        except httpx2.TransportError as err:
            raise _Break(errors.UpstreamConnectionError(f"{name}: answer cut ({type(err).__name__})",
                                                        upstream=name), "cut") from None
        events = stream._parser.answer_events(content)
        if events is None:
            raise _Break(errors.UpstreamError(f"{name}: the answer is not a completion", upstream=name),
                         "error_event")
        return events


async def _drain(read: Callable[[float], Awaitable[bytes]]) -> None:
    """Read what follows `[DONE]` (the body's end) within `FINISH_GRACE`, so the
    connection goes back to the pool instead of being closed half-read."""
    loop = asyncio.get_running_loop()
    until = loop.time() + FINISH_GRACE
    try:
        while True:
            await read(until - loop.time())
    except (StopAsyncIteration, TimeoutError, httpx2.TransportError, OSError):
        pass  # the close that follows drops the connection: nothing is lost


#: Seconds a worker uses what it last read of an upstream's usage-option refusers: one read (a
#: hop off the loop on Redis) per client at most this often, not one per stream.
REFUSERS_REREAD = 0.25
#: Per client (a new client reads afresh): (when read, the refusers read).
_refusers_read: weakref.WeakKeyDictionary[Any, tuple[float, set[str]]] = weakref.WeakKeyDictionary()


async def _refusers(client: Any) -> set[str]:
    """`usage_refusers` of the client's upstream, read at most every `REFUSERS_REREAD` seconds."""
    now = time.monotonic()
    read = _refusers_read.get(client)
    if read is not None and now - read[0] < REFUSERS_REREAD:
        return read[1]
    names = await _store_read(usage_refusers, upstream=client.name)
    _refusers_read[client] = (now, names)
    return names


async def _store_read(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """`fn` (a shared-store read or write) where the client's own steps run
    it: in a worker thread while the store is Redis, inline on local memory
    (resilience.client.core)."""
    if cache_is_shared(default_cache()):
        return await asyncio.to_thread(fn, *args, **kwargs)
    return fn(*args, **kwargs)


async def _read_error(response: Any) -> bytes:
    try:
        return await response.aread()
    except httpx2.HTTPError:
        return b""
    finally:
        await response.aclose()

