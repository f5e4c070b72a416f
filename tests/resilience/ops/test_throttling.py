"""The client address the auth-failure throttle counts by (L4): REMOTE_ADDR,
unless the peer is a configured proxy (TRUSTED_PROXIES), then the last
X-Forwarded-For hop that is not one."""
from __future__ import annotations

import runpy
from pathlib import Path

import pytest
from django.test import RequestFactory

from resilience.ops.throttling import client_address

ROOT = Path(__file__).resolve().parents[3]


def request(remote: str, forwarded: str | None = None):
    extra = {"REMOTE_ADDR": remote}
    if forwarded is not None:
        extra["HTTP_X_FORWARDED_FOR"] = forwarded
    return RequestFactory().get("/", **extra)


@pytest.mark.parametrize(("proxies", "remote", "forwarded", "client"), [
    # No proxy configured: the header is the caller's to write, even from loopback.
    ([], "127.0.0.1", "203.0.113.9", "127.0.0.1"),
    ([], "198.51.100.4", "203.0.113.9", "198.51.100.4"),
    # A configured proxy: the last hop it did not add itself.
    (["127.0.0.1"], "127.0.0.1", "203.0.113.9", "203.0.113.9"),
    (["10.0.0.0/8"], "10.1.2.3", "6.6.6.6, 203.0.113.9, 10.4.4.4", "203.0.113.9"),
    (["10.0.0.0/8", "::1"], "::1", "203.0.113.9", "203.0.113.9"),
    # A peer that is not a configured proxy is believed no more than anyone.
    (["10.0.0.0/8"], "198.51.100.4", "203.0.113.9", "198.51.100.4"),
    # A proxy passing no header (or nothing but proxies): itself, or the first hop.
    (["10.0.0.0/8"], "10.1.2.3", None, "10.1.2.3"),
    (["10.0.0.0/8"], "10.1.2.3", "10.9.9.9", "10.9.9.9"),
])
def test_client_address(settings, proxies, remote, forwarded, client):
    settings.RESILIENCE = {**settings.RESILIENCE, "TRUSTED_PROXIES": proxies}
    assert client_address(request(remote, forwarded)) == client


@pytest.mark.parametrize(("variable", "allowed"), [
    (None, []), ("10.0.0.0/8,127.0.0.1", ["10.0.0.0/8", "127.0.0.1"])])
def test_gunicorn_believes_forwarded_headers_from_the_same_proxies(monkeypatch, variable, allowed):
    """uvicorn's own default believes any loopback peer: gunicorn.conf.py hands it TRUSTED_PROXIES."""
    from gunicorn.config import Config

    if variable is None:
        monkeypatch.delenv("TRUSTED_PROXIES", raising=False)
    else:
        monkeypatch.setenv("TRUSTED_PROXIES", variable)
    conf = runpy.run_path(str(ROOT / "gunicorn.conf.py"))
    config = Config()
    config.set("forwarded_allow_ips", conf["forwarded_allow_ips"])
    assert config.forwarded_allow_ips == allowed
