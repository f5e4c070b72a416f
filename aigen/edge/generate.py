"""POST /api/ai/generate as an async view: a generation waits on the provider
without holding a thread, so one worker carries hundreds at once.

DRF's views are sync, so this is a Django async view that keeps DRF's
contract: the same authentication (Bearer/Token keys, or a session with its
CSRF check, aigen.edge.auth), the same throttle (aigen.edge.throttling), the
same body validation (`GenerationRequest.from_body`) and the shared error shape
(aigen.edge.errors). `GenerateView` (below) documents the route for the API
schema.

Tokens are checked by aigen.edge.tokens: a token's user is kept in process until
the shared token generation moves (a token revoked or a user saved), read at
most every half second, so a revoked token stops working here within about
that long, as on every other route. Only failed checks meet the failure
throttle (a valid token is never refused by it).
"""
from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable
from typing import Any

from asgiref.sync import async_to_sync
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from drf_spectacular.utils import extend_schema
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.views import APIView

from aigen.conf import aigen_settings
from aigen.edge.api import (
    AigenView,
    EventStreamRenderer,
    GenerateRequestSerializer,
    GenerateResponseSerializer,
)
from aigen.edge.auth import request_authenticate
from aigen.edge.errors import OURS, Refusal, error_response, sse
from aigen.edge.metering import caller_admit, caller_limited, spend_left_unread
from aigen.edge.parsing import body_json
from aigen.edge.streaming import EventStreamResponse
from aigen.edge.throttling import GenerateThrottle
from aigen.exceptions import CallerThrottled, GenerationError
from aigen.generation.request import GenerationRequest
from aigen.generation.services import GenerationResult, atext_generate, atext_generate_stream
from aigen.generation.spend import Spend
from resilience.exceptions import AppError
from resilience.ops.serializers import error_responses
from resilience.telemetry.slow import slow_expected


async def _settle(spend: Spend, result: GenerationResult | None) -> None:
    """A fresh answer is billed its usage; a cached one, or none, frees the reservation."""
    if result is None or result.cached:
        await spend.asettle(None, billed=False)
        return
    spend.model = result.model
    await spend.asettle(result.usage.as_dict())


def _event_stream(stream: Any, spend: Spend) -> EventStreamResponse:
    async def events() -> AsyncIterator[bytes]:
        try:
            yield sse("start", stream.meta)
            async for chunk in stream:
                yield sse("delta", {"content": chunk})
            done = stream.result.as_dict()
            done.pop("content")
            end = sse("done", {"success": True, **done})
        except GenerationError as err:
            end = sse("error", {"success": False, "error": err.as_dict()})
        finally:
            await stream.aclose()
            await _settle(spend, stream.result)
        response.end_follows()  # settled: the last event goes with the body's end
        yield end

    # The request's end settles it if the generator did not (never started, or closed later).
    spend_left_unread(lambda: _settle(spend, stream.result))
    response = EventStreamResponse(events())
    return response


class GenerateView(AigenView):
    throttle_classes = [GenerateThrottle]
    renderer_classes = [JSONRenderer, EventStreamRenderer]

    @extend_schema(
        request=GenerateRequestSerializer,
        responses={200: GenerateResponseSerializer, **error_responses(
            400, 404, 429, 502, 503, 504,
            e400="Malformed JSON, a missing or mistyped field (`error.field`), or a body over the "
                 "size limit (`invalid`, `request_too_large`).",
            e404="Unknown template or section (`template_not_found`, `section_not_found`).",
            e502="The provider failed (`provider_error`).",
            e503="The provider's breaker is open (`provider_unavailable`; see `Retry-After`).",
            e504="The provider did not answer in time (`provider_timeout`)."),
        },
        summary="Generate one section's text",
        description=(
            'With "stream": true the answer is text/event-stream: a `start` event (section_title, '
            "cached, provider, model), `delta` events ({\"content\": ...}), then `done` (the full "
            "result without content) or `error` ({\"code\", \"message\"})."
        ),
    )
    def post(self, request: Request) -> Any:
        """Served by the async view `aigen.edge.generate.generate` (the route
        points there); this DRF class documents it for the schema and runs
        it when mounted on its own."""
        return async_to_sync(generate)(request._request)


def _documented_by(view_class: type[APIView]) -> Callable[[Callable], Callable]:
    """Give an async view DRF's `as_view()` face (`cls`, `initkwargs`), the
    protocol the schema generator uses to find a route's view class. Applied
    once where the view is defined, not from the URL configuration."""
    def mark(view: Callable) -> Callable:
        view.cls, view.initkwargs = view_class, {}  # type: ignore[attr-defined]
        return view
    return mark


@slow_expected  # generations take seconds by design: not "slow requests"
@_documented_by(GenerateView)
@csrf_exempt  # token requests carry no CSRF token; session requests are checked in _authenticate
async def generate(request: HttpRequest) -> HttpResponse:
    try:
        return await _generate(request)
    except AppError as err:
        return error_response(err, shape=OURS, request=request)


def _throttled(wait: float) -> Refusal:
    return Refusal("throttled", f"Request was throttled. Expected available in {math.ceil(wait)} seconds.",
                   429, retry_after=wait)


async def _generate(request: HttpRequest) -> HttpResponse:
    if request.method != "POST":
        raise Refusal("method_not_allowed", f'Method "{request.method}" not allowed.', 405,
                      allow="POST, OPTIONS")
    request.user = await request_authenticate(request)
    throttle = GenerateThrottle()
    # A caller with limits has the throttle counted by its admission below (one round trip).
    if not caller_limited(request.user) and not await throttle.aallow(request):
        raise _throttled(throttle.wait())
    generation = GenerationRequest.from_body(body_json(request))
    kwargs = {**generation.job_args(), "user": request.user}
    try:
        spend = await caller_admit(request, model=aigen_settings.MODEL, prompt=generation.data,
                                   throttle=throttle)
    except CallerThrottled as err:
        raise _throttled(err.retry_after or 0.0) from None
    try:
        if generation.stream:
            return _event_stream(await atext_generate_stream(**kwargs), spend)
        result = await atext_generate(**kwargs)
    except BaseException:
        await spend.asettle(None, billed=False)  # no answer: the reservation is freed
        raise
    await _settle(spend, result)
    return JsonResponse({"success": True, **result.as_dict()}, json_dumps_params={"ensure_ascii": False})
