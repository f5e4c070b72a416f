"""The ASGI handler's two middleware chains (project/asgi_handler.py): a call
at /v1 or /api/ai/generate naming an API token, with no session cookie, runs
through `DOOR_MIDDLEWARE`; every other request (a session caller there
included) through `MIDDLEWARE`. The project's application in process, a fake provider
on loopback."""
from __future__ import annotations

import asyncio
import gc
import json

import httpx2
import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.test import Client

from tests.aigen.edge.conftest import llm_gateway, providers  # noqa: F401  (fixtures)

MODEL = "gpt-chain"
BODY = {"model": MODEL, "messages": [{"role": "user", "content": "which chain"}]}
#: Headers that differ between any two calls.
VARYING = {"date", "x-request-id", "server-timing"}


@pytest.fixture
def gateway(transactional_db, llm_gateway):  # noqa: F811
    return llm_gateway([MODEL])


@pytest.fixture
def served():
    """`post(path, headers, cookies)` through the application; each call says which chain served it."""
    from project.asgi import application

    chains: list[str] = []
    door = application.door.get_response_async
    full = application.get_response_async

    async def via_door(request):
        chains.append("door")
        return await door(request)

    async def via_full(request):
        chains.append("full")
        return await full(request)

    application.door.get_response_async = via_door
    application.get_response_async = via_full

    def post(path: str, headers: dict[str, str], cookies: dict[str, str] | None = None, body=None):
        async def go():
            transport = httpx2.ASGITransport(app=application)
            async with httpx2.AsyncClient(transport=transport, base_url="http://testserver",
                                          cookies=cookies) as http:
                return await http.post(path, content=json.dumps(body or BODY), headers={
                    "Content-Type": "application/json", **headers})
        chains.clear()
        response = asyncio.run(go())
        return response, list(chains)

    try:
        yield post
    finally:
        del application.door.get_response_async
        del application.get_response_async


def test_the_door_chain_is_the_full_one_without_what_only_a_session_uses():
    door = settings.DOOR_MIDDLEWARE
    assert door == [path for path in settings.MIDDLEWARE if path in door]  # same order
    assert {path.rsplit(".", 1)[-1] for path in settings.MIDDLEWARE if path not in door} == {
        "StaticFilesMiddleware", "InlineSessionMiddleware", "InlineCsrfViewMiddleware",
        "InlineAuthenticationMiddleware", "InlineMessageMiddleware", "HistoryRequestMiddleware",
        "AxesMiddleware"}
    assert "resilience.ops.inline_middleware.InlineSecurityMiddleware" in door


def _both_chains(served, monkeypatch, path, headers, body=None):
    """The same call through the door chain, then through the full one (the choice turned off)."""
    from project import asgi_handler

    lean, chains = served(path, headers, body=body)
    assert chains == ["door"]
    with monkeypatch.context() as patch:
        patch.setattr(asgi_handler, "_door_token_call", lambda request: False)
        full, chains = served(path, headers, body=body)
    assert chains == ["full"]
    return lean, full


def _kept(response) -> dict[str, str]:
    return {name: value for name, value in response.headers.items() if name not in VARYING}


def test_a_token_call_runs_through_the_door_chain_with_the_same_answer(gateway, served, monkeypatch):
    bearer = {"Authorization": f"Bearer {gateway}"}
    lean, full = _both_chains(served, monkeypatch, "/v1/chat/completions", bearer)
    assert lean.status_code == full.status_code == 200, lean.text
    assert lean.json()["choices"] == full.json()["choices"]
    assert _kept(lean) == _kept(full)
    assert lean.headers["x-content-type-options"] == "nosniff" and lean.headers["x-frame-options"] == "DENY"
    # A session cookie (an unknown session: the token still decides) takes the full chain.
    cookie = {settings.SESSION_COOKIE_NAME: "unknown"}
    answer, chains = served("/v1/chat/completions", {"Authorization": f"Bearer {gateway}"}, cookies=cookie)
    assert answer.status_code == 200 and chains == ["full"]


def test_a_token_generation_runs_through_the_door_chain_with_the_same_answer(gateway, served, monkeypatch):
    from tests.aigen.conftest import SECTION_2

    body = {"template_id": "emergency_plan", "section_id": "2", "data": SECTION_2}
    lean, full = _both_chains(served, monkeypatch, "/api/ai/generate", {"Authorization": f"Token {gateway}"},
                              body=body)
    assert lean.status_code == full.status_code == 200, lean.text
    assert lean.json()["content"] == full.json()["content"] and full.json()["cached"] is True
    lean.headers.pop("content-length"), full.headers.pop("content-length")  # "cached": false / true
    assert _kept(lean) == _kept(full)


@pytest.mark.parametrize("path, headers, status", [
    # x-api-key is the Messages door's header: at the chat door it names nobody (and no session).
    ("/v1/chat/completions", {"x-api-key": "KEY"}, 401),
    ("/v1/chat/completions", {"Authorization": "Bearer not-a-token"}, 401),
    ("/v1/messages", {"x-api-key": "not-a-token", "anthropic-version": "2023-06-01"}, 401),
    ("/v1/messages", {"x-api-key": "KEY", "anthropic-version": "2023-06-01"}, 200),
])
def test_the_door_chain_answers_as_the_full_one(gateway, served, monkeypatch, path, headers, status):
    headers = {name: value.replace("KEY", gateway) for name, value in headers.items()}
    lean, full = _both_chains(served, monkeypatch, path, headers, body={**BODY, "max_tokens": 20})
    assert lean.status_code == full.status_code == status, lean.text
    answer = lean.json()
    if status == 200:
        answer.pop("id"), full.json().pop("id")
        assert answer["content"] == full.json()["content"]
    else:
        assert answer == full.json()
    if "Authorization" not in headers and path == "/v1/chat/completions":
        # The full chain looked for a session (none) and says the answer varies by cookie; without
        # a session layer it does not.
        assert full.headers.pop("vary") == "Cookie" and "vary" not in lean.headers
    assert _kept(lean) == _kept(full)


def test_a_session_caller_at_v1_runs_through_the_full_chain(gateway, served):
    browser = Client()
    browser.force_login(get_user_model().objects.get(username="caller"))
    browser.get("/admin/login/")  # sets the CSRF cookie
    cookies = {name: morsel.value for name, morsel in browser.cookies.items()}
    headers = {"X-CSRFToken": cookies["csrftoken"], "Authorization": "Bearer ignored-with-a-session"}
    # A token keyword with a session cookie: the full chain (the token is checked first and refused here).
    answer, chains = served("/v1/chat/completions", headers, cookies=cookies)
    assert chains == ["full"] and answer.status_code == 401
    answer, chains = served("/v1/chat/completions", {"X-CSRFToken": cookies["csrftoken"]}, cookies=cookies)
    assert chains == ["full"] and answer.status_code == 200, answer.text
    missing, chains = served("/v1/chat/completions", {}, cookies=cookies)  # no CSRF token: 403
    assert chains == ["full"] and missing.status_code == 403


@pytest.mark.parametrize("stream", [False, True], ids=["answer", "stream"])
def test_an_answered_door_call_leaves_nothing_for_the_garbage_collector(gateway, served, stream):
    """A door call's objects go when it ends, by reference counting: none is left in a reference
    cycle for the collector. httpx2's transport, as uvicorn, hands the disconnect listener a
    disconnect once the answer is sent; re-raised in the handler's frame, that RequestAborted held
    the frame, the frame its task, the task the exception: every request's objects in a cycle.
    (The full chain keeps Django's own: AuthenticationMiddleware's `request.auser` partial and the
    messages storage each hold the request that holds them.)"""
    from django.core.handlers.asgi import ASGIRequest
    from django.http import HttpResponseBase

    bearer = {"Authorization": f"Bearer {gateway}"}
    body = {**BODY, "stream": stream}
    served("/v1/chat/completions", bearer, body=body)  # first-use work (imports, the client) first
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)  # what a collection finds is kept in gc.garbage, to be looked at
    try:
        answer, chains = served("/v1/chat/completions", bearer, body=body)
        gc.collect()
        left = sorted({type(thing).__qualname__ for thing in gc.garbage
                       if isinstance(thing, ASGIRequest | HttpResponseBase | BaseException)})
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
    assert answer.status_code == 200 and chains == ["door"], answer.text
    assert ("data: [DONE]" in answer.text) is stream
    assert left == []
