"""The test fakes misbehave as documented: FakeUpstream driven by `requests`,
FakeOpenAI driven by the real openai SDK, both over real loopback sockets."""
from __future__ import annotations

import json
import socket
import threading
import time

import openai
import pytest
import requests

from tests.support.fake_openai import MALFORMED_JSON, MODEL_ID, FakeOpenAI
from tests.support.fake_upstream import FakeUpstream, Reply

USER = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello there"}]


@pytest.fixture
def upstream():
    with FakeUpstream() as fake:
        yield fake


@pytest.fixture
def fake_openai():
    with FakeOpenAI() as fake:
        yield fake


@pytest.fixture
def client(fake_openai):
    sdk = openai.OpenAI(api_key="test", base_url=fake_openai.url, max_retries=0)
    yield sdk
    sdk.close()


def _wait_until(condition, timeout: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.005)


# -- FakeUpstream ---------------------------------------------------------


def test_unscripted_path_echoes_path_method_and_query(upstream):
    response = requests.get(f"{upstream.url}/things?colour=red&size=2")

    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json"
    assert response.json() == {"path": "/things", "method": "GET", "query": {"colour": "red", "size": "2"}}


def test_script_plays_replies_in_order_then_repeats_the_last(upstream):
    upstream.script("/flaky", Reply(500), Reply(503), Reply(200, body={"ok": True}))

    statuses = [requests.get(f"{upstream.url}/flaky?attempt={i}").status_code for i in range(5)]

    assert statuses == [500, 503, 200, 200, 200]
    assert requests.get(f"{upstream.url}/flaky").json() == {"ok": True}


def test_script_can_be_replaced_and_scoped_to_a_method(upstream):
    upstream.script("/items", Reply(500))
    upstream.script("/items", Reply(201, body="created"), method="POST")

    assert requests.post(f"{upstream.url}/items").text == "created"
    assert requests.get(f"{upstream.url}/items").status_code == 500

    upstream.script("/items", Reply(204))
    assert requests.get(f"{upstream.url}/items").status_code == 204


def test_retry_after_header(upstream):
    upstream.script("/limited", Reply(429, retry_after="3"))

    response = requests.get(f"{upstream.url}/limited")

    assert response.status_code == 429
    assert response.headers["Retry-After"] == "3"


def test_delay_holds_back_the_status_line(upstream):
    upstream.script("/slow", Reply(200, body="late", delay=0.3))

    started = time.monotonic()
    assert requests.get(f"{upstream.url}/slow").text == "late"
    assert time.monotonic() - started >= 0.3

    with pytest.raises(requests.ReadTimeout):
        requests.get(f"{upstream.url}/slow", timeout=0.05)


def test_slow_body_arrives_complete_after_about_four_body_delays(upstream):
    body = bytes(range(256)) * 4
    upstream.script("/trickle", Reply(200, body=body, body_delay=0.05))

    started = time.monotonic()
    response = requests.get(f"{upstream.url}/trickle")

    assert time.monotonic() - started >= 4 * 0.05
    assert response.headers["Content-Length"] == str(len(body))
    assert response.content == body


def test_reset_raises_connection_error(upstream):
    upstream.script("/reset", Reply(reset=True))

    with pytest.raises(requests.ConnectionError, match="Connection reset"):
        requests.get(f"{upstream.url}/reset")


def test_malformed_reply_is_not_http(upstream):
    upstream.script("/garbage", Reply(malformed=True))

    with pytest.raises(requests.ConnectionError, match="BadStatusLine"):
        requests.get(f"{upstream.url}/garbage")


def test_keep_alive_session_uses_one_connection(upstream):
    with requests.Session() as session:
        for _ in range(5):
            session.get(f"{upstream.url}/pooled").raise_for_status()

    assert upstream.connections == 1
    assert len({r.connection_id for r in upstream.requests}) == 1


def test_close_reply_makes_the_client_reconnect(upstream):
    upstream.script("/closing", Reply(200, close=True))

    with requests.Session() as session:
        responses = [session.get(f"{upstream.url}/closing") for _ in range(3)]

    assert all(r.headers["Connection"] == "close" for r in responses)
    assert upstream.connections == 3


def test_concurrent_requests_are_handled_in_parallel(upstream):
    upstream.script("/parallel", Reply(200, delay=0.2))
    threads = [threading.Thread(target=requests.get, args=(f"{upstream.url}/parallel",)) for _ in range(10)]

    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=5)

    assert upstream.count("/parallel") == 10
    assert upstream.max_concurrent >= 5


def test_requests_are_recorded(upstream):
    before = time.monotonic()
    requests.post(f"{upstream.url}/orders?dry=1", json={"sku": "A1"}, headers={"X-Trace": "abc"})
    requests.get(f"{upstream.url}/orders")

    first, second = upstream.requests
    assert (first.method, first.path, first.query, first.params) == ("POST", "/orders", "dry=1", {"dry": "1"})
    assert first.json() == {"sku": "A1"}
    assert first.headers["x-trace"] == first.headers["X-TRACE"] == "abc"
    assert "Content-Type" in first.headers
    assert before <= first.at <= second.at
    assert upstream.count("/orders") == 2
    assert upstream.count("/orders", method="post") == 1
    assert upstream.count(method="DELETE") == 0

    upstream.script("/orders", Reply(500))
    upstream.reset()
    assert upstream.requests == [] and upstream.connections == 0
    assert requests.get(f"{upstream.url}/orders").status_code == 200  # script forgotten too


@pytest.mark.parametrize("method", ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
def test_every_method_is_answered_and_its_body_read(upstream, method):
    with requests.Session() as session:
        response = session.request(method, f"{upstream.url}/any", data=b"payload")
        # A second call on the same connection proves the body was read off the socket.
        session.request(method, f"{upstream.url}/any", data=b"payload")

    assert response.status_code == 200
    if method == "HEAD":
        assert response.content == b""
        assert int(response.headers["Content-Length"]) > 0
    else:
        assert response.json()["method"] == method
    assert [r.body for r in upstream.requests] == [b"payload", b"payload"]
    assert upstream.connections == 1


def test_stop_is_fast_refuses_connections_and_start_reuses_the_port():
    upstream = FakeUpstream().start()
    port = upstream.port
    upstream.script("/stuck", Reply(200, delay=30))
    errors = []

    def call_stuck():
        try:
            requests.get(f"{upstream.url}/stuck", timeout=10)
        except requests.RequestException as err:
            errors.append(err)

    with requests.Session() as session:
        session.get(f"{upstream.url}/idle")  # leaves a kept-alive connection open
        stuck = threading.Thread(target=call_stuck)
        stuck.start()
        _wait_until(lambda: upstream.count("/stuck") == 1)

        started = time.monotonic()
        upstream.stop()
        assert time.monotonic() - started < 1
        stuck.join(timeout=2)
        assert errors and isinstance(errors[0], requests.ConnectionError)

        with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port), timeout=1):
            pass

        upstream.start()
        try:
            assert upstream.port == port
            assert session.get(f"{upstream.url}/again").status_code == 200
        finally:
            upstream.stop()


# -- FakeOpenAI through the real SDK --------------------------------------


def test_chat_completion_answers_the_last_user_message(fake_openai, client):
    completion = client.chat.completions.create(model="gpt-test", messages=USER)

    assert completion.object == "chat.completion"
    assert completion.model == "gpt-test"
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].message.content == "FAKE-LLM: hello there"
    assert completion.choices[0].finish_reason == "stop"
    usage = completion.usage
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens > 0
    assert fake_openai.chat_calls == 1
    recorded = fake_openai.requests[0]
    assert recorded.headers["Authorization"] == "Bearer test"
    assert recorded.json()["messages"] == USER
    assert fake_openai.chat_requests() == [{"model": "gpt-test", "messages": USER}]


def test_sdk_reuses_one_connection_for_plain_calls(fake_openai, client):
    for _ in range(3):
        client.chat.completions.create(model="m", messages=USER)

    assert fake_openai.connections == 1


def test_streamed_completion_arrives_in_pieces_with_usage_last(fake_openai, client):
    stream = client.chat.completions.create(
        model="m", messages=USER, stream=True, stream_options={"include_usage": True},
    )
    chunks = list(stream)

    assert all(chunk.object == "chat.completion.chunk" for chunk in chunks)
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert 3 <= len(pieces) <= 5
    assert "".join(pieces) == "FAKE-LLM: hello there"
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens > 0
    assert fake_openai.chat_requests()[0]["stream"] is True


def test_stream_without_usage_option_has_no_usage_chunk(client):
    chunks = list(client.chat.completions.create(model="m", messages=USER, stream=True))

    assert all(chunk.usage is None and chunk.choices for chunk in chunks)


def test_models_list(client):
    assert [model.id for model in client.models.list()] == [MODEL_ID]


def test_missing_messages_is_an_openai_style_400(fake_openai, client):
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="m", messages=[])

    assert caught.value.param == "messages"
    assert caught.value.type == "invalid_request_error"
    assert fake_openai.chat_calls == 1


def test_scripted_429_is_a_rate_limit_error_then_normal_service_resumes(fake_openai, client):
    fake_openai.fail_next(Reply(429, retry_after="1"))

    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model="m", messages=USER)
    assert caught.value.status_code == 429
    assert caught.value.response.headers["retry-after"] == "1"
    assert caught.value.code == "rate_limit_exceeded"

    assert client.chat.completions.create(model="m", messages=USER).choices[0].message.content
    assert fake_openai.chat_calls == 2


def test_scripted_500_is_an_internal_server_error(fake_openai, client):
    fake_openai.fail_next(Reply(500))

    with pytest.raises(openai.InternalServerError) as caught:
        client.chat.completions.create(model="m", messages=USER)

    assert caught.value.status_code == 500
    assert caught.value.type == "server_error"


def test_sdk_retries_a_429_using_retry_after_ms(fake_openai):
    fake_openai.fail_next(
        Reply(429, headers={"retry-after-ms": "10"}), Reply(500, headers={"retry-after-ms": "10"}),
    )
    sdk = openai.OpenAI(api_key="test", base_url=fake_openai.url, max_retries=2)

    try:
        completion = sdk.chat.completions.create(model="m", messages=USER)
    finally:
        sdk.close()

    assert completion.choices[0].message.content == "FAKE-LLM: hello there"
    assert fake_openai.chat_calls == 3


def test_malformed_json_escapes_the_sdk_as_a_plain_json_decode_error(client, fake_openai):
    # The SDK parses a JSON content type with json.loads and does not wrap the
    # failure: callers catching openai.APIError alone will miss it.
    fake_openai.fail_next(MALFORMED_JSON)

    with pytest.raises(json.JSONDecodeError) as caught:
        client.chat.completions.create(model="m", messages=USER)

    assert not isinstance(caught.value, openai.OpenAIError)


def test_non_json_200_comes_back_as_a_string_not_an_error(fake_openai, client):
    # Without strict response validation the SDK returns the body text as is.
    fake_openai.fail_next(Reply(200, body="<html>proxy error</html>"))

    assert client.chat.completions.create(model="m", messages=USER) == "<html>proxy error</html>"


@pytest.mark.parametrize("reply", [Reply(reset=True), Reply(malformed=True)], ids=["reset", "malformed"])
def test_broken_connection_is_an_api_connection_error(fake_openai, client, reply):
    fake_openai.fail_next(reply)

    with pytest.raises(openai.APIConnectionError):
        client.chat.completions.create(model="m", messages=USER)
    assert client.chat.completions.create(model="m", messages=USER).choices[0].message.content


def test_slow_reply_sends_the_normal_completion_late_or_times_out(fake_openai, client):
    fake_openai.fail_next(Reply(200, delay=0.2), Reply(200, delay=0.3))

    started = time.monotonic()
    completion = client.chat.completions.create(model="m", messages=USER)
    assert time.monotonic() - started >= 0.2
    assert completion.choices[0].message.content == "FAKE-LLM: hello there"

    with pytest.raises(openai.APITimeoutError):
        client.with_options(timeout=0.1).chat.completions.create(model="m", messages=USER)


def test_slow_stream_trickles_events(fake_openai, client):
    fake_openai.fail_next(Reply(200, body_delay=0.02))

    started = time.monotonic()
    chunks = list(client.chat.completions.create(model="m", messages=USER, stream=True))

    assert time.monotonic() - started >= 0.1  # role + 4 content + finish + [DONE] events, 0.02 s apart
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "FAKE-LLM: hello there"


def test_sync_sdk_stream_gives_up_its_connection_after_done(fake_openai, client):
    # openai 3.54's sync Stream stops reading at `data: [DONE]` and closes the
    # response before the chunked body's end, so httpx2 drops that connection
    # (the async Stream drains it and keeps it). Connection-counting tests of
    # streaming code must expect one new connection per sync stream.
    client.chat.completions.create(model="m", messages=USER)
    list(client.chat.completions.create(model="m", messages=USER, stream=True))
    client.chat.completions.create(model="m", messages=USER)

    first, streamed, after = (r.connection_id for r in fake_openai.requests)
    assert first == streamed != after
    assert fake_openai.connections == 2


def test_reset_forgets_queued_failures(fake_openai, client):
    fake_openai.fail_next(Reply(500))
    fake_openai.reset()

    assert client.chat.completions.create(model="m", messages=USER).choices[0].message.content
    assert fake_openai.chat_calls == 1
