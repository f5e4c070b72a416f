"""Wire formats per attempt: the hook the attempt step calls when the
endpoint an attempt goes to speaks another wire format than the call.

An endpoint declares the wire format it speaks (`Endpoint.wire_format`:
`openai` or `anthropic`). The client knows no format itself: a call made
with `wire=<a WireBridge>` (the front doors' bridges,
aigen.generation.bridges) is in the bridge's `format`. For each attempt on
an endpoint of another format, the attempt step (resilience.client.attempt)
asks the bridge for the request as that endpoint takes it (`encode`: its
path, body and headers) and hands the answer back `decode`d before anything
else reads it, so the cache, single-flight's followers, the call log's
status and the caller all see the call's own format; failover may move a
call from one format to the other and back. A streamed attempt's events
are parsed with the `codec` of the endpoint that answered
(resilience.client.stream); every codec yields the same event model.

Who may import it: the client's steps and the stream supervisor; the
bridges implement it from a higher floor.

On failure: a body the bridge cannot encode raises `ValueError` (the
attempt answers it as a refusal naming why, nothing sent); `decode` never
raises (an answer of an unexpected shape decodes to an empty answer).
"""
from __future__ import annotations

from typing import Any, Protocol

from resilience.client.urls import join_url


class WireBridge(Protocol):
    """A call's wire format and its translation to and from the others."""

    #: The wire format of the call's own body and answers.
    format: str
    #: Request headers that change the answer (in every cache key of calls in this format).
    vary: tuple[str, ...]

    def encode(self, body: Any, headers: dict[str, str], *, target: str) -> tuple[str, Any, dict[str, str]]:
        """(path, body, headers) of the call as an endpoint speaking `target` takes it."""

    def decode(self, content: bytes, *, status: int, target: str, request: Any) -> bytes:
        """The answer (`status`, `content`) of a `target` endpoint, in the call's format;
        `request` is the call's own body."""

    def codec(self, target: str) -> Any:
        """The stream codec (resilience.client.stream.WireCodec) of `target`'s events."""


def translated(bridge: WireBridge | None, target: str) -> bool:
    """Whether an attempt on an endpoint speaking `target` needs the bridge."""
    return bridge is not None and target != bridge.format


def encoded_url(base_url: str, path: str, *, upstream: str) -> str:
    """The URL of the translated call: `path` under the endpoint's base URL."""
    return join_url(base_url, path, upstream=upstream)
