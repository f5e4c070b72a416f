# Mock answers are Chinese text with Chinese punctuation, on purpose.
# ruff: noqa: RUF001
"""Providers turn a rendered prompt into text: `OpenAIProvider` (any
OpenAI-compatible API, through the resilient `openai` upstream) and
`MockProvider` (no key configured: deterministic, offline, marked as mock).

`get_provider()` returns the process's provider for the current settings
(rebuilt when `AIGEN` changes); `provider_announce()` logs which provider and
model serve, once per process.

On failure a provider raises only `GenerationError` kinds: `ProviderUnavailable`
(503, breaker open or upstream disabled; `retry_after` set), `ProviderTimeout`
(504, timeout or deadline), `ProviderError` (502, anything else: retries
exhausted, an error status, a malformed answer).
"""
from __future__ import annotations

import hashlib
import logging
import re
import threading
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

from django.core.signals import setting_changed

from aigen.conf import aigen_settings
from aigen.exceptions import ProviderError, ProviderTimeout, ProviderUnavailable
from resilience.client import upstream_client
from resilience.client.openai_wire import INCLUDE_USAGE
from resilience.exceptions import (
    BreakerOpen,
    LocalCapacityExhausted,
    RetriesExhausted,
    StreamInterrupted,
    UpstreamDisabled,
    UpstreamError,
    UpstreamHTTPError,
    UpstreamTimeout,
)

logger = logging.getLogger(__name__)

MOCK_MARK = "【模拟内容】"


@dataclass(frozen=True)
class Prompt:
    """What a provider is asked: chat messages, plus the section and data they
    were rendered from (the mock provider builds its answer from those)."""

    messages: list[dict[str, str]]
    params: dict[str, Any]
    template_title: str
    section_title: str
    data: dict[str, Any]
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None

    def as_dict(self) -> dict[str, int | None]:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "total_tokens": self.total_tokens}


@dataclass(frozen=True)
class Completion:
    content: str
    usage: Usage


class CompletionStream:
    """Text deltas of a streamed completion; `usage` is known once exhausted.
    Always `close()` it (or exhaust it)."""

    def __init__(self, deltas: Iterator[str], close: Any = None) -> None:
        self._deltas = deltas
        self._close = close
        self.usage = Usage()

    def __iter__(self) -> Iterator[str]:
        return self._deltas

    def close(self) -> None:
        if self._close is not None:
            self._close()
        close = getattr(self._deltas, "close", None)
        if close is not None:
            close()


class AsyncCompletionStream:
    """`CompletionStream` for async code: `async for` the deltas, then `usage`
    and `model` (the model that finished the answer, when the provider named
    it). Always `await aclose()` it (or exhaust it)."""

    def __init__(self, deltas: AsyncIterator[str], close: Any = None) -> None:
        self._deltas = deltas
        self._close = close
        self.usage = Usage()
        self.model: str | None = None

    def __aiter__(self) -> AsyncIterator[str]:
        return self._deltas

    async def aclose(self) -> None:
        if self._close is not None:
            await self._close()
        close = getattr(self._deltas, "aclose", None)
        if close is not None:
            await close()


class Provider(ABC):
    """A provider answers in both faces: `complete`/`stream` for sync code,
    `acomplete`/`astream` for async code (the async API views)."""

    name: str
    model: str

    @abstractmethod
    def complete(self, prompt: Prompt) -> Completion:
        """The whole answer, or a `GenerationError`."""

    @abstractmethod
    def stream(self, prompt: Prompt) -> CompletionStream:
        """Open a streamed answer: errors before the first byte raise here,
        later ones while iterating."""

    @abstractmethod
    async def acomplete(self, prompt: Prompt) -> Completion:
        """`complete` for async code."""

    @abstractmethod
    async def astream(self, prompt: Prompt) -> AsyncCompletionStream:
        """`stream` for async code."""

    def describe(self) -> dict[str, str]:
        return {"provider": self.name, "model": self.model}


# -- mock ----------------------------------------------------------------------------

def _estimate_tokens(text: str) -> int:
    return len(text) // 2 + 1


class MockProvider(Provider):
    """Deterministic offline answers built from the section and its data."""

    name = "mock"
    model = "mock-1"

    def _text(self, prompt: Prompt) -> str:
        digest = hashlib.sha256(repr(sorted(_flatten(prompt.data))).encode()).hexdigest()[:8]
        lines = [
            f"{MOCK_MARK}{prompt.template_title} · {prompt.section_title}",
            "",
            "（未配置 OPENAI_API_KEY，本段为离线模拟文本，仅用于演示与测试；"
            f"模拟编号 {digest}）",
            "",
            "根据提交的资料：",
        ]
        for path, value in _flatten(prompt.data):
            label = prompt.labels.get(re.sub(r"\[\d+\]", "", path), path)
            lines.append(f"- {label}：{value}")
        lines += ["", f"本节“{prompt.section_title}”应结合以上信息编写，配置语言模型后将生成正式内容。"]
        return "\n".join(lines)

    def complete(self, prompt: Prompt) -> Completion:
        text = self._text(prompt)
        prompt_tokens = sum(_estimate_tokens(m["content"]) for m in prompt.messages)
        completion_tokens = _estimate_tokens(text)
        return Completion(text, Usage(prompt_tokens, completion_tokens, prompt_tokens + completion_tokens))

    def stream(self, prompt: Prompt) -> CompletionStream:
        completion = self.complete(prompt)
        lines = completion.content.splitlines(keepends=True)
        stream = CompletionStream(iter(lines))
        stream.usage = completion.usage
        return stream

    async def acomplete(self, prompt: Prompt) -> Completion:
        return self.complete(prompt)

    async def astream(self, prompt: Prompt) -> AsyncCompletionStream:
        completion = self.complete(prompt)

        async def lines() -> AsyncIterator[str]:
            for line in completion.content.splitlines(keepends=True):
                yield line

        stream = AsyncCompletionStream(lines())
        stream.usage = completion.usage
        return stream


def _flatten(data: Any, prefix: str = "") -> list[tuple[str, str]]:
    if isinstance(data, dict):
        out: list[tuple[str, str]] = []
        for key, value in data.items():
            out.extend(_flatten(value, f"{prefix}.{key}" if prefix else key))
        return out
    if isinstance(data, list):
        if all(not isinstance(v, dict | list) for v in data):
            return [(prefix, "、".join(str(v) for v in data))]
        out = []
        for index, value in enumerate(data):
            out.extend(_flatten(value, f"{prefix}[{index}]"))
        return out
    if isinstance(data, bool):
        return [(prefix, "是" if data else "否")]
    return [(prefix, str(data))]


# -- OpenAI-compatible ---------------------------------------------------------------

def _map_error(err: BaseException, upstream_name: str) -> Exception:
    """A `GenerationError` for an upstream or SDK failure."""
    import openai

    if isinstance(err, BreakerOpen):
        return ProviderUnavailable(
            f"The AI provider is temporarily unavailable (circuit open); retry in "
            f"{max(1, round(err.retry_after))} s.", retry_after=err.retry_after, upstream=upstream_name)
    if isinstance(err, LocalCapacityExhausted):
        return ProviderUnavailable("The AI provider is at capacity on this server; retry shortly.",
                                   retry_after=err.retry_after, upstream=upstream_name)
    if isinstance(err, UpstreamDisabled):
        return ProviderUnavailable("The AI provider is disabled.", retry_after=60, upstream=upstream_name)
    if isinstance(err, UpstreamTimeout):
        return ProviderTimeout("The AI provider did not answer in time.", upstream=upstream_name)
    if isinstance(err, StreamInterrupted):
        kind = ProviderTimeout if err.cause == "upstream_timeout" else ProviderError
        return kind(f"The AI provider's stream broke and could not be continued: {err.message}",
                    upstream=upstream_name)
    if isinstance(err, RetriesExhausted):
        return ProviderError(f"The AI provider kept failing: {err.message}", upstream=upstream_name,
                             upstream_status=err.last_status, retry_after=err.retry_after)
    if isinstance(err, UpstreamHTTPError):
        return ProviderError(f"The AI provider refused the request (HTTP {err.response.status_code}).",
                             upstream=upstream_name, upstream_status=err.response.status_code)
    if isinstance(err, UpstreamError):
        return ProviderError(f"The AI provider could not be reached: {err.message}", upstream=upstream_name)
    if isinstance(err, openai.APITimeoutError):
        return ProviderTimeout("The AI provider did not answer in time.", upstream=upstream_name)
    if isinstance(err, openai.APIStatusError):
        return ProviderError(f"The AI provider refused the request (HTTP {err.status_code}).",
                             upstream=upstream_name, upstream_status=err.status_code)
    if isinstance(err, openai.OpenAIError):
        return ProviderError(f"The AI provider failed: {type(err).__name__}.", upstream=upstream_name)
    return ProviderError(f"The AI provider sent an unusable answer ({type(err).__name__}).",
                         upstream=upstream_name)


class OpenAIProvider(Provider):
    """Chat completions through the openai SDK, sent by the resilient client.

    The SDK never retries (`max_retries=0`): the upstream policy does, so one
    generation is one logical call with one deadline, one breaker and one
    call-log row.

    The provider's key is the upstream policy's credential (OPENAI_API_KEY on
    the seeded `openai` upstream): the client adds it for the policy's origin
    only, so moving the upstream elsewhere takes the permission to change
    credentials. The SDK holds a placeholder.

    Requests go through the SDK's own `post` (its documented way to send any
    request) with `cast_to=object`: the SDK builds the request, decodes the
    SSE stream and maps errors, and answers are kept as the JSON it received
    instead of being rebuilt as typed models chunk by chunk (that construction
    was about a tenth of a worker's CPU per streamed generation).
    """

    name = "openai"

    def __init__(self, *, model: str, upstream_name: str = "openai") -> None:
        import httpx2
        import openai

        from aigen.generation.transport import (
            SDK_API_KEY,
            SDK_BASE_URL,
            AsyncUpstreamTransport,
            UpstreamTransport,
        )

        self.model = model
        self.upstream_name = upstream_name
        # The key never goes into the SDK: the upstream's policy names it
        # (OPENAI_API_KEY on the seeded `openai` upstream), bound to its origin.
        self.client = openai.OpenAI(
            api_key=SDK_API_KEY, base_url=SDK_BASE_URL, max_retries=0,
            http_client=httpx2.Client(transport=UpstreamTransport(upstream_name)),
        )
        # No pool of its own (the transport is the upstream's): usable from any event loop.
        self.async_client = openai.AsyncOpenAI(
            api_key=SDK_API_KEY, base_url=SDK_BASE_URL, max_retries=0,
            http_client=httpx2.AsyncClient(transport=AsyncUpstreamTransport(upstream_name)),
        )

    def _body(self, prompt: Prompt, stream: bool) -> dict[str, Any]:
        body = {"model": self.model, "messages": prompt.messages, **prompt.params}
        if stream:
            body.update(stream=True, stream_options={"include_usage": True})
        return body

    def _call(self, prompt: Prompt, *, stream: bool = False) -> Any:
        import openai

        try:
            return self.client.post("/chat/completions", body=self._body(prompt, stream), cast_to=object,
                                    stream=stream, stream_cls=openai.Stream[object])
        except (UpstreamError, openai.OpenAIError) as err:
            raise _map_error(err, self.upstream_name) from err
        except ValueError as err:  # a body that is not JSON
            raise _map_error(err, self.upstream_name) from err

    async def _acall(self, prompt: Prompt, *, stream: bool = False) -> Any:
        import openai

        try:
            return await self.async_client.post(
                "/chat/completions", body=self._body(prompt, stream), cast_to=object,
                stream=stream, stream_cls=openai.AsyncStream[object])
        except (UpstreamError, openai.OpenAIError, ValueError) as err:
            raise _map_error(err, self.upstream_name) from err

    def complete(self, prompt: Prompt) -> Completion:
        return self._completion(self._call(prompt))

    async def acomplete(self, prompt: Prompt) -> Completion:
        return self._completion(await self._acall(prompt))

    def _completion(self, response: Any) -> Completion:
        try:
            content = response["choices"][0]["message"]["content"]
            usage = response.get("usage") or {}
            if not isinstance(content, str):
                raise TypeError("no text content")
            tokens = Usage(*(usage.get(n) for n in ("prompt_tokens", "completion_tokens", "total_tokens")))
        except (AttributeError, IndexError, TypeError, KeyError) as err:
            raise ProviderError("The AI provider sent an answer without text.",
                                upstream=self.upstream_name) from err
        return Completion(content, tokens)

    def stream(self, prompt: Prompt) -> CompletionStream:
        import openai

        sdk_stream = self._call(prompt, stream=True)
        result = CompletionStream(iter(()), close=sdk_stream.close)

        def deltas() -> Iterator[str]:
            try:
                for chunk in sdk_stream:
                    yield from _chunk_texts(chunk, result)
            except (UpstreamError, openai.OpenAIError, *_UNUSABLE) as err:
                raise _map_error(err, self.upstream_name) from err
            finally:
                sdk_stream.close()

        result._deltas = deltas()
        return result

    async def astream(self, prompt: Prompt) -> AsyncCompletionStream:
        """A supervised stream (resilience.client.stream): a break after the
        first byte continues on another endpoint, the text stays one answer."""
        try:
            supervised = await upstream_client(self.upstream_name).astream(
                "/chat/completions", json=self._body(prompt, True), optional_usage=INCLUDE_USAGE)
        except UpstreamError as err:
            raise _map_error(err, self.upstream_name) from err
        result = AsyncCompletionStream(_empty(), close=supervised.aclose)

        async def deltas() -> AsyncIterator[str]:
            try:
                async for event in supervised:
                    if event.text:
                        yield event.text
                    if event.usage:
                        result.usage = Usage(*(event.usage.get(n) for n in
                                               ("prompt_tokens", "completion_tokens", "total_tokens")))
                result.model = supervised.model
            except UpstreamError as err:
                raise _map_error(err, self.upstream_name) from err
            finally:
                await supervised.aclose()

        result._deltas = deltas()
        return result


# What a body or chunk that is not OpenAI's shape raises on the way to its text.
_UNUSABLE = (ValueError, AttributeError, TypeError, KeyError)


def _chunk_texts(chunk: Any, stream: CompletionStream | AsyncCompletionStream) -> list[str]:
    """The text deltas of one streamed chunk (a dict as sent); its usage (the last
    chunk's) goes on `stream`. Shapes that are not OpenAI's raise AttributeError,
    TypeError or KeyError, which the callers report as an unusable answer."""
    usage = chunk.get("usage")
    if usage:
        stream.usage = Usage(usage.get("prompt_tokens"), usage.get("completion_tokens"),
                             usage.get("total_tokens"))
    return [text for choice in chunk.get("choices") or ()
            if (text := (choice.get("delta") or {}).get("content"))]


async def _empty() -> AsyncIterator[str]:
    return
    yield


# -- selection -----------------------------------------------------------------------

_provider: Provider | None = None
_provider_lock = threading.Lock()
_announced = False


def provider_build() -> Provider:
    """A provider for the current settings: OpenAI with a key, else the mock."""
    if aigen_settings.OPENAI_API_KEY:
        return OpenAIProvider(model=aigen_settings.MODEL, upstream_name=aigen_settings.UPSTREAM)
    return MockProvider()


def get_provider() -> Provider:
    """The process's provider (built on first use, rebuilt after an AIGEN change)."""
    global _provider
    provider = _provider
    if provider is None:
        with _provider_lock:
            if _provider is None:
                _provider = provider_build()
            provider = _provider
    return provider


def provider_info() -> dict[str, str]:
    """Which provider and model serve, without building the provider."""
    if aigen_settings.OPENAI_API_KEY:
        return {"provider": OpenAIProvider.name, "model": aigen_settings.MODEL}
    return {"provider": MockProvider.name, "model": MockProvider.model}


def provider_announce() -> None:
    """Log once per process which provider and model serve."""
    global _announced
    if _announced:
        return
    _announced = True
    info = provider_info()
    if info["provider"] == MockProvider.name:
        logger.info("aigen: provider mock (no OPENAI_API_KEY set), model %s: answers are marked %s",
                    info["model"], MOCK_MARK)
    else:
        logger.info("aigen: provider %s, model %s, through upstream %r", info["provider"], info["model"],
                    aigen_settings.UPSTREAM)
        if provider_upstream_keyless():
            logger.warning("aigen: upstream %r names no credential, so OPENAI_API_KEY is not sent: set its "
                           "authentication to bearer with OPENAI_API_KEY (admin, needs change_credentials)",
                           aigen_settings.UPSTREAM)


def provider_upstream_keyless() -> bool:
    """Whether the provider's upstream exists and names no credential (the
    key is the upstream's credential; the SDK sends none). False when the
    tables are not there yet."""
    from django.db import DatabaseError

    from resilience.models import Upstream

    try:
        return Upstream.objects.filter(name=aigen_settings.UPSTREAM,
                                       auth_kind=Upstream.AuthKind.NONE).exists()
    except DatabaseError:
        return False


def provider_prepare() -> None:
    """Build this process's provider and load its upstream before the first
    request (a server calls this at start: the first burst then pays no
    imports, SDK set-up or policy load)."""
    provider = get_provider()
    if isinstance(provider, OpenAIProvider):
        from resilience import upstream

        upstream(provider.upstream_name)


def provider_reset() -> None:
    global _provider
    with _provider_lock:
        _provider = None


def _on_setting_changed(*, setting: str, **kwargs: Any) -> None:
    if setting == "AIGEN":
        provider_reset()


setting_changed.connect(_on_setting_changed)
