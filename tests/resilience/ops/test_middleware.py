"""The service's own request handling: request ids (into the call logs),
slow-request logging, and negotiated gzip/brotli compression."""
from __future__ import annotations

import gzip
import json
import logging
import os
import zlib

import brotli
import pytest
from django.http import HttpResponse, JsonResponse, StreamingHttpResponse
from django.test import Client, RequestFactory
from rest_framework.test import APIClient

from resilience import upstream
from resilience.client.context import current_request_id
from resilience.models import CallLog
from resilience.ops.middleware import (
    CompressionMiddleware,
    RequestIdMiddleware,
    RequestTimingMiddleware,
    accepted_encoding,
)
from resilience.telemetry.calllog import call_log_flush
from tests.support.roles import role_user

pytestmark = pytest.mark.django_db

DOCS_JS = "/static/drf_spectacular_sidecar/swagger-ui-dist/swagger-ui-bundle.js"


@pytest.fixture
def staff_client() -> APIClient:
    client = APIClient()
    client.force_login(role_user("operator", username="staff"))  # the probe needs change_upstream
    return client


# -- request id ------------------------------------------------------------------------------------
@pytest.mark.parametrize("given", ["abc-123", "A.b_c-9", "x" * 64, "0f8e6c1a2b3d4e5f"])
def test_a_sane_request_id_is_echoed(given):
    response = Client().get("/healthz", HTTP_X_REQUEST_ID=given)
    assert response["X-Request-ID"] == given


@pytest.mark.parametrize("given", [None, "", "x" * 65, "has space", "semi;colon", "ünïcode", "a/b",
                                   "<script>"])
def test_a_missing_or_insane_request_id_is_replaced(given):
    headers = {} if given is None else {"HTTP_X_REQUEST_ID": given}
    rid = Client().get("/healthz", **headers)["X-Request-ID"]
    assert rid != given and len(rid) == 32 and int(rid, 16) >= 0


def test_every_response_gets_a_request_id(db):
    client = Client()
    for path in ("/healthz", "/no-such-page", "/api/resilience/upstreams", "/api/schema/", DOCS_JS,
                 "/metrics"):
        assert len(client.get(path)["X-Request-ID"]) == 32, path
    assert Client().get("/healthz")["X-Request-ID"] != Client().get("/healthz")["X-Request-ID"]


def test_the_request_id_lands_in_the_call_logs_of_the_calls_it_caused(fake, make_upstream, staff_client):
    make_upstream(health_path="/health")
    response = staff_client.post("/api/resilience/upstreams/api/probe", HTTP_X_REQUEST_ID="probe-run.42")
    assert response.status_code == 200 and response["X-Request-ID"] == "probe-run.42"
    call_log_flush()
    [row] = CallLog.objects.all()
    assert (row.path, row.request_id) == ("/health", "probe-run.42")
    assert current_request_id.get() is None  # not left behind


def test_the_request_id_stays_bound_while_a_streaming_body_is_produced(fake, make_upstream):
    make_upstream()

    def events():
        yield b"start\n"
        yield upstream("api").get("/during-stream").content

    middleware = RequestIdMiddleware(lambda request: StreamingHttpResponse(events()))
    response = middleware(RequestFactory().get("/stream", HTTP_X_REQUEST_ID="stream-1"))
    assert current_request_id.get() is None
    body = b"".join(response.streaming_content)
    assert b"/during-stream" in body and current_request_id.get() is None
    call_log_flush()
    assert CallLog.objects.get().request_id == "stream-1"


# -- slow requests -------------------------------------------------------------------------------
class SteppingClock:
    def __init__(self, step: float) -> None:
        self.now, self.step = 0.0, step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


def test_a_slow_request_is_logged_once_with_its_id_and_path(monkeypatch, caplog, settings):
    settings.RESILIENCE = {**settings.RESILIENCE, "SLOW_REQUEST_SECONDS": 1.0}
    monkeypatch.setattr(RequestTimingMiddleware, "timer", staticmethod(SteppingClock(0.75)))  # 0.75 s
    with caplog.at_level(logging.WARNING, logger="resilience.ops.middleware"):
        Client().get("/healthz", HTTP_X_REQUEST_ID="fast-one")
    assert not [r for r in caplog.records if r.name == "resilience.ops.middleware"]
    monkeypatch.setattr(RequestTimingMiddleware, "timer", staticmethod(SteppingClock(2.5)))  # 2.5 s
    with caplog.at_level(logging.WARNING, logger="resilience.ops.middleware"):
        Client().get("/healthz?x=1", HTTP_X_REQUEST_ID="slow-one")
    [record] = [r for r in caplog.records if r.name == "resilience.ops.middleware"]
    message = record.getMessage()
    assert "slow request" in message and "/healthz" in message and "slow-one" in message
    assert "2.500 s" in message


def test_slow_request_logging_can_be_switched_off(monkeypatch, caplog, settings):
    settings.RESILIENCE = {**settings.RESILIENCE, "SLOW_REQUEST_SECONDS": 0}
    monkeypatch.setattr(RequestTimingMiddleware, "timer", staticmethod(SteppingClock(100)))
    with caplog.at_level(logging.WARNING, logger="resilience.ops.middleware"):
        Client().get("/healthz")
    assert not [r for r in caplog.records if r.name == "resilience.ops.middleware"]


# -- compression -------------------------------------------------------------------------------------
@pytest.mark.parametrize(("header", "expected"), [
    ("", None),
    ("identity", None),
    ("gzip", "gzip"),
    ("x-gzip", "gzip"),
    ("br", "br"),
    ("gzip, deflate, br", "br"),
    ("gzip, deflate, br, zstd", "br"),
    ("GZIP;Q=1.0, BR;q=1", "br"),
    ("br;q=0, gzip", "gzip"),
    ("br;q=0.0, gzip;q=0.1", "gzip"),
    ("gzip;q=0.8, br;q=0.5", "gzip"),
    ("gzip;q=0.5, br;q=0.9", "br"),
    ("gzip;q=0, br;q=0", None),
    ("deflate", None),
    ("*", "br"),
    ("*;q=0.3, br;q=0", "gzip"),
    ("*;q=0", None),
    ("gzip;q=bogus, br;q=0", None),
    ("br;q=2", "br"),
    (" br ; q=0.5 ,gzip;q=0.4", "br"),
])
def test_accept_encoding_negotiation(header, expected):
    assert accepted_encoding(header) == expected


def schema_response(encoding: str | None):
    headers = {"HTTP_ACCEPT_ENCODING": encoding} if encoding is not None else {}
    return Client().get("/api/schema/", {"format": "json"}, **headers)


def test_big_responses_are_compressed_as_negotiated():
    plain = schema_response(None)
    assert "Content-Encoding" not in plain and plain["Vary"].count("Accept-Encoding") == 1
    schema = plain.json()
    assert len(plain.content) > 10_000

    gz = schema_response("gzip, deflate")
    assert gz["Content-Encoding"] == "gzip" and "Accept-Encoding" in gz["Vary"]
    assert json.loads(gzip.decompress(gz.content)) == schema
    assert int(gz["Content-Length"]) == len(gz.content) < len(plain.content) / 3

    br = schema_response("gzip, br")
    assert br["Content-Encoding"] == "br"
    assert json.loads(brotli.decompress(br.content)) == schema

    assert schema_response("br;q=0, gzip")["Content-Encoding"] == "gzip"
    for refused in ("identity", "gzip;q=0, br;q=0", "deflate"):
        response = schema_response(refused)
        assert "Content-Encoding" not in response and response.json() == schema
        assert "Accept-Encoding" in response["Vary"]


def test_small_responses_are_untouched(settings):
    response = Client().get("/healthz", HTTP_ACCEPT_ENCODING="gzip, br")
    assert "Content-Encoding" not in response and response.json() == {"status": "ok"}
    assert "Accept-Encoding" not in response.get("Vary", "")
    body = b"a" * 600
    response = middleware_response(HttpResponse(body, content_type="text/plain"), accept="gzip")
    assert "Content-Encoding" not in response and response.content == body
    settings.RESILIENCE = {**settings.RESILIENCE, "COMPRESS_MIN_SIZE": 500}
    response = middleware_response(HttpResponse(body, content_type="text/plain"), accept="gzip")
    assert response["Content-Encoding"] == "gzip" and gzip.decompress(response.content) == body


def test_static_files_are_compressed_too():
    plain = Client().get(DOCS_JS)
    body = b"".join(plain.streaming_content)
    response = Client().get(DOCS_JS, HTTP_ACCEPT_ENCODING="br")
    assert response["Content-Encoding"] == "br" and "Content-Length" not in response
    assert brotli.decompress(b"".join(response.streaming_content)) == body
    if plain.has_header("ETag"):
        assert response["ETag"] == "W/" + plain["ETag"]


def middleware_response(response, accept: str = "gzip, br"):
    middleware = CompressionMiddleware(lambda request: response)
    return middleware(RequestFactory().get("/", HTTP_ACCEPT_ENCODING=accept))


def test_already_encoded_partial_no_transform_and_binary_bodies_are_untouched():
    body = b"x" * 5000
    encoded = HttpResponse(body, content_type="text/plain")
    encoded["Content-Encoding"] = "identity-ish"
    partial = HttpResponse(body, status=206, content_type="text/plain")
    no_transform = HttpResponse(body, content_type="text/plain")
    no_transform["Cache-Control"] = "no-transform"
    binary = HttpResponse(body, content_type="image/png")
    for response in (encoded, partial, no_transform, binary):
        out = middleware_response(response)
        assert out.content == body and out.get("Content-Encoding") in (None, "identity-ish")


def test_incompressible_bodies_stay_identity():
    noise = os.urandom(5000)
    response = middleware_response(HttpResponse(noise, content_type="text/plain"), accept="gzip")
    assert "Content-Encoding" not in response and response.content == noise


def test_strong_etags_become_weak():
    response = JsonResponse({"data": "y" * 4000})
    response["ETag"] = '"abc"'
    out = middleware_response(response, accept="gzip")
    assert out["ETag"] == 'W/"abc"' and out["Content-Encoding"] == "gzip"


@pytest.mark.parametrize("coding", ["gzip", "br"])
def test_streaming_bodies_are_compressed_chunk_by_chunk(coding):
    events = [f"event: delta\ndata: {i}\n\n".encode() for i in range(5)]
    response = StreamingHttpResponse(iter(events), content_type="text/event-stream")
    out = middleware_response(response, accept=coding)
    assert out["Content-Encoding"] == coding and "Accept-Encoding" in out["Vary"]
    decoder = zlib.decompressobj(31) if coding == "gzip" else brotli.Decompressor()
    decode = decoder.decompress if coding == "gzip" else decoder.process
    received = []
    for chunk in out.streaming_content:
        received.append(decode(chunk))
    # Each event can be decoded as soon as its chunk arrives: nothing waits for the end.
    assert received[:5] == events
    assert b"".join(received) == b"".join(events)
