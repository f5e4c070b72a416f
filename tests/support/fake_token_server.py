"""A loopback OAuth2 token server and the provider it issues tokens for, for
tests of accounts (resilience.client.accounts).

`FakeTokenServer` serves, on one 127.0.0.1 port:
- `POST /token`: `grant_type=refresh_token` rotates the refresh token (the
  spent one is remembered: using it again counts a reuse and revokes the
  whole family, as real providers do) and issues an access token living
  `lifetime` seconds; `grant_type=client_credentials` checks the client
  secret; `fail_status` makes every grant answer that status instead;
- any other path is the provider: it answers 200 only to
  `Authorization: Bearer <live access token>`, else 401; a POST to a path
  ending in `/chat/completions` is answered as OpenAI's chat completion (so
  the gateway's front door and the openai SDK can call it);
- `stall` seconds: every grant waits that long, or until `release` is set,
  before answering (a token server that hangs); `stalled` is set once a
  grant is held.
Counters: `refreshes` and `served` per client id, `reuses`, `provider_401`,
`provider_ok`.
Tokens are random and long, so a test can search files for them.
"""
from __future__ import annotations

import json
import secrets
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:  # quiet
        pass

    def _reply(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def do_POST(self) -> None:
        body = self._body()
        if self.path == "/token":
            if self.server.owner.stall:
                self.server.owner.stalled.set()
                self.server.owner.release.wait(self.server.owner.stall)
            self._reply(*self.server.owner.grant(dict(parse_qsl(body.decode()))))
        else:
            self._provider(body)

    def do_GET(self) -> None:
        self._provider()

    def _provider(self, body: bytes = b"") -> None:
        auth = self.headers.get("Authorization", "")
        token = auth.removeprefix("Bearer ").strip()
        if self.server.owner.accepts(token):
            self._reply(200, _chat(body) if self.path.endswith("/chat/completions") else
                        {"ok": True, "path": self.path})
        else:
            self._reply(401, {"error": {"message": f"Invalid token: {token}", "type": "invalid_token"}})


def _chat(body: bytes) -> dict[str, Any]:
    try:
        model = str(json.loads(body or b"{}").get("model") or "fake")
    except (ValueError, AttributeError):
        model = "fake"
    message = {"role": "assistant", "content": "ok", "refusal": None}
    return {"id": "chatcmpl-" + secrets.token_hex(6), "object": "chat.completion",
            "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None, "message": message}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    owner: FakeTokenServer


class FakeTokenServer:
    """See the module docstring."""

    def __init__(self, *, lifetime: float = 3600.0) -> None:
        self.lifetime = lifetime
        self.fail_status = 0
        self.stall = 0.0
        self.release = threading.Event()
        self.stalled = threading.Event()
        self.client_secrets: dict[str, str] = {}
        self.refreshes: Counter[str] = Counter()
        self.reuses = 0
        self.provider_ok = 0
        self.served: Counter[str] = Counter()  # calls the provider accepted, per client id
        self.provider_401 = 0
        self._lock = threading.Lock()
        self._refresh: dict[str, tuple[str, str, bool]] = {}  # token -> (client, family, spent)
        self._revoked_families: set[str] = set()
        self._access: dict[str, tuple[str, float, str]] = {}  # token -> (family, expires at, client)
        self._server: _Server | None = None
        self.issued: list[str] = []  # every token handed out (for leak searches)

    # -- life ----------------------------------------------------------------------------------
    def start(self) -> FakeTokenServer:
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.owner = self
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def token_url(self) -> str:
        return f"{self.url}/token"

    # -- tokens --------------------------------------------------------------------------------
    def refresh_token_issue(self, client_id: str) -> str:
        """A first refresh token of a new family (as a login would give)."""
        token = "rt-" + secrets.token_urlsafe(24)
        with self._lock:
            self._refresh[token] = (client_id, secrets.token_hex(8), False)
            self.issued.append(token)
        return token

    def revoke_access(self, client_id: str | None = None) -> None:
        """Revoke every access token issued so far (a provider-side rotation),
        or only those of `client_id`."""
        with self._lock:
            if client_id is None:
                self._access.clear()
            else:
                self._access = {token: found for token, found in self._access.items()
                                if found[2] != client_id}

    def expires_at(self, client_id: str) -> float:
        """When the newest access token of `client_id` expires (0 when none)."""
        with self._lock:
            return max((found[1] for found in self._access.values() if found[2] == client_id), default=0.0)

    def accepts(self, token: str) -> bool:
        with self._lock:
            found = self._access.get(token)
            ok = found is not None and found[0] not in self._revoked_families and found[1] > time.time()
            if ok:
                self.provider_ok += 1
                self.served[found[2]] += 1  # type: ignore[index]
            else:
                self.provider_401 += 1
            return ok

    def _access_issue(self, family: str, client: str) -> dict[str, Any]:
        access = "at-" + secrets.token_urlsafe(24)
        self._access[access] = (family, time.time() + self.lifetime, client)
        self.issued.append(access)
        return {"access_token": access, "token_type": "Bearer", "expires_in": self.lifetime}

    def grant(self, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        if self.fail_status:
            return self.fail_status, {"error": "temporarily_unavailable"}
        with self._lock:
            if form.get("grant_type") == "client_credentials":
                client = form.get("client_id", "")
                if not client or self.client_secrets.get(client) != form.get("client_secret"):
                    return 401, {"error": "invalid_client"}
                self.refreshes[client] += 1
                return 200, self._access_issue("cc-" + client, client)
            if form.get("grant_type") != "refresh_token":
                return 400, {"error": "unsupported_grant_type"}
            found = self._refresh.get(form.get("refresh_token", ""))
            if found is None or found[0] != form.get("client_id"):
                return 400, {"error": "invalid_grant"}
            client, family, spent = found
            if spent:
                self.reuses += 1
                self._revoked_families.add(family)
                return 400, {"error": "invalid_grant", "error_description": "refresh token reused"}
            if family in self._revoked_families:
                return 400, {"error": "invalid_grant"}
            self._refresh[form["refresh_token"]] = (client, family, True)
            rotated = "rt-" + secrets.token_urlsafe(24)
            self._refresh[rotated] = (client, family, False)
            self.issued.append(rotated)
            self.refreshes[client] += 1
            return 200, {**self._access_issue(family, client), "refresh_token": rotated}
