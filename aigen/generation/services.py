"""The generation service: `text_generate()` and `text_generate_stream()`,
and their async twins `atext_generate()` and `atext_generate_stream()` (used
by the async API views; same keys, cache, single-flight and records).

A request names a template, a section and its data. The data is validated and
made canonical (declared fields only, strings trimmed), which with the template
version, the prompt-body hash, the provider, the model and the model parameters
gives the cache key (`ai:<template>:<section>:<digest>`): the same request
written differently hits the same entry. Answers are kept in Django's cache
(Redis, or local memory while Redis is down) for the section's TTL.

Identical requests that miss together make one provider call
(`resilience.client.flight.SingleFlight`): threads of a process wait for the first
one's result; other processes see its cache lock (`flight:ai:...`, shared
through Redis while it is up) and wait for the answer to appear in the cache.
Every request queues one `Generation` record.

An empty answer is an error (`ProviderError`), never cached. A stream is
iterated once; iterating it again, or after `close()`, yields nothing and
changes nothing.

On failure: `GenerationError` kinds only (400 bad data, 404 unknown template or
section, 502/503/504 from the provider, see aigen.exceptions); a request that
waited on another's flight gets that flight's error. Cache outages never fail
a request (the cache falls back to memory).
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from django.core.cache import cache

from aigen.conf import aigen_settings
from aigen.exceptions import ProviderError, SingleFlightTimeout
from aigen.generation.providers import (
    AsyncCompletionStream,
    CompletionStream,
    Prompt,
    Provider,
    Usage,
    get_provider,
    provider_info,
)
from aigen.generation.records import generation_record, generation_row
from aigen.generation.registry import Section, get_registry
from aigen.models import Generation
from resilience.cache import cache_is_shared, cache_key
from resilience.client.flight import SingleFlight

logger = logging.getLogger(__name__)

#: Test seam: the clock latencies are measured with.
clock = time.monotonic


@dataclass(frozen=True)
class GenerationResult:
    """One answer. `cached` is true when no provider call was made for it (a
    cache hit, or an identical concurrent request's answer)."""

    content: str
    section_title: str
    cached: bool
    provider: str
    model: str
    usage: Usage
    latency_ms: int
    cache_key: str
    template_id: str
    section_id: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "content": self.content,
            "section_title": self.section_title,
            "cached": self.cached,
            "template_id": self.template_id,
            "section_id": self.section_id,
            "provider": self.provider,
            "model": self.model,
            "usage": self.usage.as_dict(),
            "latency_ms": self.latency_ms,
        }


@dataclass(frozen=True)
class _Request:
    section: Section
    data: dict[str, Any]
    provider: Provider
    key: str
    digest: str

    def prompt(self) -> Prompt:
        section = self.section
        return Prompt(messages=section.messages(self.data), params=dict(section.params),
                      template_title=section.template_title, section_title=section.title,
                      data=self.data, labels=dict(section.labels))


# -- cache keys ----------------------------------------------------------------------

def generation_cache_key(section: Section, data: dict[str, Any], provider: Provider) -> str:
    """The cache key for canonical `data` (as returned by `section.clean`)."""
    return _key_and_digest(section, data, provider)[0]


def _key_and_digest(section: Section, data: dict[str, Any], provider: Provider) -> tuple[str, str]:
    canonical = {
        "template": section.template_id,
        "section": section.id,
        "version": section.template_version,
        "prompt": section.prompt_hash,
        "provider": provider.name,
        "model": provider.model,
        "params": dict(section.params),
        "data": data,
    }
    encoded = json.dumps(canonical, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    digest = hashlib.sha256(encoded.encode()).hexdigest()[:40]
    return cache_key("ai", section.template_id, section.id, digest), digest


def generation_key_pattern(template_id: str | None = None) -> str:
    """The glob (inside the `ai` namespace) matching one template's entries, or all."""
    return f"{template_id}:*" if template_id else "*"


def _prepare(template_id: str, section_id: str, data: Any) -> _Request:
    section = get_registry().section(str(template_id), str(section_id))
    clean = section.clean(data)
    provider = get_provider()
    key, digest = _key_and_digest(section, clean, provider)
    return _Request(section, clean, provider, key, digest)


# -- the cache -----------------------------------------------------------------------

def _cache_entry(value: Any) -> dict[str, Any] | None:
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value
    return None


def _cache_get(key: str) -> dict[str, Any] | None:
    return _cache_entry(cache.get(key))


async def _acache_get(key: str) -> dict[str, Any] | None:
    # Django's async cache method: the Redis round trip never runs on the loop.
    return _cache_entry(await cache.aget(key))


def _entry(req: _Request, content: str, usage: Usage, latency_ms: int,
           model: str | None = None) -> dict[str, Any]:
    return {
        "content": content,
        "section_title": req.section.title,
        "provider": req.provider.name,
        "model": model or req.provider.model,
        "usage": usage.as_dict(),
        "latency_ms": latency_ms,
        "generated_at": datetime.now(UTC).isoformat(),
    }


def _result(req: _Request, entry: dict[str, Any], *, cached: bool, started: float) -> GenerationResult:
    usage = entry.get("usage") or {}
    return GenerationResult(
        content=entry["content"], section_title=req.section.title, cached=cached,
        provider=entry.get("provider", req.provider.name), model=entry.get("model", req.provider.model),
        usage=Usage(usage.get("prompt_tokens"), usage.get("completion_tokens"), usage.get("total_tokens")),
        latency_ms=_ms_since(started), cache_key=req.key, template_id=req.section.template_id,
        section_id=req.section.id,
    )


def _ms_since(started: float) -> int:
    return max(0, round((clock() - started) * 1000))


# -- single flight -------------------------------------------------------------------

_flight = SingleFlight()


def _cache_peek(key: str) -> dict[str, Any] | None:
    # Polled while another process generates: has_key is not counted as a
    # miss, so waiting does not skew the hit rate.
    return _cache_get(key) if cache.has_key(key) else None


def _single_flight(req: _Request) -> tuple[dict[str, Any], bool]:
    """The entry for `req.key` and whether it came without a provider call."""
    wait = float(aigen_settings.SINGLE_FLIGHT_TIMEOUT)
    try:
        return _flight.run(req.key, lambda: _produce(req), wait=wait,
                           shared_result=lambda: _cache_peek(req.key))
    except TimeoutError:  # concurrent.futures' wait limit, not a provider timeout
        raise SingleFlightTimeout("An identical request is still generating; try again shortly.",
                                  template_id=req.section.template_id, section_id=req.section.id) from None


def _kept(req: _Request, content: str, usage: Usage, started: float, *,
          model: str | None = None) -> dict[str, Any]:
    """The entry to store for a provider's answer; an empty one is refused,
    never cached. `model`: the model that produced it, when not the
    configured one (a stream finished by a fallback endpoint)."""
    if not content.strip():
        raise ProviderError("The AI provider sent an empty answer.", upstream=req.provider.name)
    return _entry(req, content, usage, _ms_since(started), model)


def _keep(req: _Request, content: str, usage: Usage, started: float, *,
          model: str | None = None) -> dict[str, Any]:
    """Store a provider's answer (`_kept`)."""
    entry = _kept(req, content, usage, started, model=model)
    _store(req, entry)
    return entry


def _store(req: _Request, entry: dict[str, Any]) -> None:
    cache.set(req.key, entry, timeout=req.section.cache_ttl)


async def _akeep(req: _Request, content: str, usage: Usage, started: float, *,
                 model: str | None = None) -> dict[str, Any]:
    """`_keep` for async code: the cache write never runs on the loop."""
    entry = _kept(req, content, usage, started, model=model)
    await cache.aset(req.key, entry, timeout=req.section.cache_ttl)
    return entry


def _produce(req: _Request) -> dict[str, Any]:
    """Call the provider and store its answer."""
    started = clock()
    completion = req.provider.complete(req.prompt())
    return _keep(req, completion.content, completion.usage, started)


async def _aproduce(req: _Request, *, keep: bool = True) -> dict[str, Any]:
    """Call the provider and store its answer (`keep` False: the entry only, its caller stores it)."""
    started = clock()
    completion = await req.provider.acomplete(req.prompt())
    if not keep:
        return _kept(req, completion.content, completion.usage, started)
    return await _akeep(req, completion.content, completion.usage, started)


async def _asingle_flight(req: _Request, *, lookup: bool = False) -> tuple[dict[str, Any], bool]:
    """`_single_flight` for async code. Its store work takes two hops off the loop: the lock with
    the cache read first when `lookup` (a hit is returned as shared), the entry's write with the
    lock's release."""
    wait = float(aigen_settings.SINGLE_FLIGHT_TIMEOUT)
    try:
        return await _flight.arun(req.key, lambda: _aproduce(req, keep=False), wait=wait,
                                  shared_result=lambda: _cache_peek(req.key),
                                  first=(lambda: _cache_get(req.key)) if lookup else None,
                                  keep=lambda entry: _store(req, entry))
    except TimeoutError:
        raise SingleFlightTimeout("An identical request is still generating; try again shortly.",
                                  template_id=req.section.template_id, section_id=req.section.id) from None


# -- records -------------------------------------------------------------------------

def _record(*, template_id: str, section_id: str, req: _Request | None, user: Any, started: float,
            stream: bool, result: GenerationResult | None = None, error: BaseException | None = None,
            aborted: bool = False) -> None:
    provider = req.provider if req is not None else None
    info = {"provider": provider.name, "model": provider.model} if provider else provider_info()
    row = generation_row(
        template_id=str(template_id)[:64], section_id=str(section_id)[:64],
        template_version=req.section.template_version if req else None,
        cache_key=req.key if req else "", stream=stream,
        provider=info["provider"], model=info["model"][:100], latency_ms=_ms_since(started),
        user_id=getattr(user, "pk", None) if getattr(user, "is_authenticated", False) else None,
    )
    if result is not None:
        row["cached"] = result.cached
        if not result.cached:
            row["prompt_tokens"] = result.usage.prompt_tokens
            row["completion_tokens"] = result.usage.completion_tokens
            row["total_tokens"] = result.usage.total_tokens
    if aborted:
        row["outcome"] = Generation.Outcome.ABORTED.value
    elif error is not None:
        row["outcome"] = Generation.Outcome.ERROR.value
        row["error_code"] = str(getattr(error, "code", type(error).__name__))[:64]
        row["error"] = (getattr(error, "message", None) or str(error))[:500]
    try:
        generation_record(row)
    except Exception:  # a record must never break generation
        logger.exception("aigen: could not queue a generation record")


# -- the service ---------------------------------------------------------------------

class _Attempt:
    """One request's record, written once: with its error when the block
    raises, or with `done(result)`. `req` is set once the request is known."""

    def __init__(self, template_id: str, section_id: str, user: Any, *, stream: bool) -> None:
        self.template_id, self.section_id, self.user, self.stream = template_id, section_id, user, stream
        self.started = clock()
        self.req: _Request | None = None

    def __enter__(self) -> _Attempt:
        return self

    def __exit__(self, kind: Any, error: BaseException | None, traceback: Any) -> None:
        if isinstance(error, Exception):
            self._record(error=error)

    def done(self, result: GenerationResult) -> GenerationResult:
        self._record(result=result)
        return result

    def _record(self, **outcome: Any) -> None:
        _record(template_id=self.template_id, section_id=self.section_id, req=self.req, user=self.user,
                started=self.started, stream=self.stream, **outcome)


def text_generate(*, template_id: str, section_id: str, data: Any, use_cache: bool = True,
                  user: Any = None) -> GenerationResult:
    """Generate (or fetch from the cache) the text for one section.

    `use_cache=False` skips the lookup and the single flight, asks the provider
    and refreshes the cached entry with its answer. Raises `GenerationError`
    kinds (see module docstring); records the request either way.
    """
    with _Attempt(template_id, section_id, user, stream=False) as attempt:
        req = attempt.req = _prepare(template_id, section_id, data)
        hit = _cache_get(req.key) if use_cache else None
        if hit is not None:
            entry, cached = hit, True
        elif not use_cache:
            entry, cached = _produce(req), False
        else:
            entry, cached = _single_flight(req)
        result = _result(req, entry, cached=cached, started=attempt.started)
    return attempt.done(result)


async def atext_generate(*, template_id: str, section_id: str, data: Any, use_cache: bool = True,
                         user: Any = None) -> GenerationResult:
    """`text_generate` for async code (the provider call never holds a thread)."""
    with _Attempt(template_id, section_id, user, stream=False) as attempt:
        req = attempt.req = _prepare(template_id, section_id, data)
        if not use_cache:
            entry, cached = await _aproduce(req), False
        elif cache_is_shared(cache):  # Redis: the cache read rides with the lock's hop
            entry, cached = await _asingle_flight(req, lookup=True)
        else:  # local memory: read inline (no I/O), a miss goes through the flight
            hit = _cache_get(req.key)
            entry, cached = (hit, True) if hit is not None else await _asingle_flight(req)
        result = _result(req, entry, cached=cached, started=attempt.started)
    return attempt.done(result)


class GenerationStream:
    """A generation delivered piece by piece.

    Iterate it once (sync: `for`, async: `async for`) for text chunks; errors
    after the start raise `GenerationError` while iterating. Once exhausted,
    `result` holds the `GenerationResult` (and a fresh answer is cached).
    `close()` / `aclose()` before the end abandons it: nothing is cached and
    the record says `aborted`. A second iteration, or one after closing,
    yields nothing and changes nothing.
    """

    def __init__(self, req: _Request, *, started: float, user: Any,
                 completion: CompletionStream | AsyncCompletionStream | None = None,
                 cached_entry: dict[str, Any] | None = None) -> None:
        self._req = req
        self._started = started
        self._user = user
        self._completion = completion
        self._cached_entry = cached_entry
        self._finished = False
        self._iterated = False
        self.cached = cached_entry is not None
        self.result: GenerationResult | None = None

    @property
    def meta(self) -> dict[str, Any]:
        """What is known before the first chunk."""
        req = self._req
        return {"template_id": req.section.template_id, "section_id": req.section.id,
                "section_title": req.section.title, "cached": self.cached,
                "provider": req.provider.name, "model": req.provider.model}

    def _begin(self) -> bool:
        """Whether this iteration may run (the first, before any close)."""
        if self._iterated or self._finished:
            return False
        self._iterated = True
        return True

    def _complete(self, parts: list[str], usage: Usage, model: str | None = None) -> None:
        req = self._req
        entry = _keep(req, "".join(parts), usage, self._started, model=model)
        self.result = _result(req, entry, cached=False, started=self._started)

    async def _acomplete(self, parts: list[str], usage: Usage, model: str | None = None) -> None:
        req = self._req
        entry = await _akeep(req, "".join(parts), usage, self._started, model=model)
        self.result = _result(req, entry, cached=False, started=self._started)

    def __iter__(self) -> Iterator[str]:
        return self._run()

    def _run(self) -> Iterator[str]:
        if not self._begin():
            return
        req = self._req
        if self._cached_entry is not None:
            yield self._cached_entry["content"]
            self.result = _result(req, self._cached_entry, cached=True, started=self._started)
            self._finish()
            return
        completion = self._completion
        assert isinstance(completion, CompletionStream)
        parts: list[str] = []
        try:
            for chunk in completion:
                parts.append(chunk)
                yield chunk
            self._complete(parts, completion.usage)
        except GeneratorExit:
            self._finish(aborted=True)
            raise
        except Exception as err:
            self._finish(error=err)
            raise
        self._finish()

    def __aiter__(self) -> AsyncIterator[str]:
        return self._arun()

    async def _arun(self) -> AsyncIterator[str]:
        if not self._begin():
            return
        req = self._req
        if self._cached_entry is not None:
            yield self._cached_entry["content"]
            self.result = _result(req, self._cached_entry, cached=True, started=self._started)
            await self._afinish()
            return
        completion = self._completion
        assert isinstance(completion, AsyncCompletionStream)
        parts: list[str] = []
        try:
            async for chunk in completion:
                parts.append(chunk)
                yield chunk
            await self._acomplete(parts, completion.usage, completion.model)
        except (GeneratorExit, asyncio.CancelledError):
            await self._afinish(aborted=True)
            raise
        except Exception as err:
            await self._afinish(error=err)
            raise
        await self._afinish()

    def _finish(self, *, error: BaseException | None = None, aborted: bool = False) -> None:
        if self._mark_finished(error=error, aborted=aborted) and \
                isinstance(self._completion, CompletionStream):
            self._completion.close()

    async def _afinish(self, *, error: BaseException | None = None, aborted: bool = False) -> None:
        if self._mark_finished(error=error, aborted=aborted) and \
                isinstance(self._completion, AsyncCompletionStream):
            await self._completion.aclose()

    def _mark_finished(self, *, error: BaseException | None, aborted: bool) -> bool:
        """Record the outcome once; True the first time."""
        if self._finished:
            return False
        self._finished = True
        section = self._req.section
        _record(template_id=section.template_id, section_id=section.id, req=self._req, user=self._user,
                started=self._started, stream=True, result=self.result, error=error, aborted=aborted)
        return True

    def close(self) -> None:
        """Abandon the stream (a no-op once it finished)."""
        self._finish(aborted=True)

    async def aclose(self) -> None:
        await self._afinish(aborted=True)


def text_generate_stream(*, template_id: str, section_id: str, data: Any, use_cache: bool = True,
                         user: Any = None) -> GenerationStream:
    """Like `text_generate`, streamed. Validation, the cache lookup and the
    provider's first response happen here (their errors raise here); the text
    follows while iterating the returned `GenerationStream`.

    A cache hit is delivered as one chunk. A streamed miss is not
    single-flighted (waiting for another request's whole answer would defeat
    streaming): it streams from the provider and caches the answer at the end.
    """
    with _Attempt(template_id, section_id, user, stream=True) as attempt:
        req = attempt.req = _prepare(template_id, section_id, data)
        entry = _cache_get(req.key) if use_cache else None
        if entry is not None:
            return GenerationStream(req, started=attempt.started, user=user, cached_entry=entry)
        completion = req.provider.stream(req.prompt())
    return GenerationStream(req, started=attempt.started, user=user, completion=completion)


async def atext_generate_stream(*, template_id: str, section_id: str, data: Any, use_cache: bool = True,
                                user: Any = None) -> GenerationStream:
    """`text_generate_stream` for async code: `async for` the returned stream."""
    with _Attempt(template_id, section_id, user, stream=True) as attempt:
        req = attempt.req = _prepare(template_id, section_id, data)
        entry = await _acache_get(req.key) if use_cache else None
        if entry is not None:
            return GenerationStream(req, started=attempt.started, user=user, cached_entry=entry)
        completion = await req.provider.astream(req.prompt())
    return GenerationStream(req, started=attempt.started, user=user, completion=completion)
