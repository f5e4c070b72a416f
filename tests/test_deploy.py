"""Deploy settings (issue 23 M4, L7): the TLS switches read from the
environment, `check --deploy` clean on the README's production settings (with
Django's middleware-gated checks run for the project's subclasses), and a weak
SECRET_KEY refused by the servers in one line."""
from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from tests.support.redis_server import free_port
from tests.test_setup import fresh_env, manage

ROOT = Path(__file__).resolve().parent.parent
STRONG_KEY = "Zq3v-production-like-secret-key-for-the-deploy-tests-only-9f8e7d"
#: The README's production settings (Security section), TLS ended by a proxy.
PRODUCTION = {"DEBUG": "false", "SECRET_KEY": STRONG_KEY, "ALLOWED_HOSTS": "gateway.example.com",
              "SECURE_PROXY_SSL_HEADER": "HTTP_X_FORWARDED_PROTO,https", "SECURE_HSTS_PRELOAD": "true"}
SWITCHES = ("SESSION_COOKIE_SECURE", "CSRF_COOKIE_SECURE", "SECURE_SSL_REDIRECT", "SECURE_HSTS_SECONDS",
            "SECURE_HSTS_INCLUDE_SUBDOMAINS", "SECURE_HSTS_PRELOAD", "SECURE_PROXY_SSL_HEADER")


def _settings(tmp_path: Path, **env: str) -> dict:
    code = ("import json; from django.conf import settings as s;"
            f"print(json.dumps({{n: getattr(s, n, None) for n in {SWITCHES!r}}}))")
    done = manage(fresh_env(tmp_path, **env), "shell", "-c", code)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_tls_switches_are_on_by_default_behind_tls_with_debug_off(tmp_path):
    behind_proxy = _settings(tmp_path, DEBUG="false", SECURE_PROXY_SSL_HEADER="HTTP_X_FORWARDED_PROTO,https")
    assert behind_proxy == {"SESSION_COOKIE_SECURE": True, "CSRF_COOKIE_SECURE": True,
                            "SECURE_SSL_REDIRECT": True, "SECURE_HSTS_SECONDS": 31536000,
                            "SECURE_HSTS_INCLUDE_SUBDOMAINS": True, "SECURE_HSTS_PRELOAD": False,
                            "SECURE_PROXY_SSL_HEADER": ["HTTP_X_FORWARDED_PROTO", "https"]}
    assert _settings(tmp_path, DEBUG="false", HTTPS="true")["SECURE_SSL_REDIRECT"] is True
    plain = _settings(tmp_path, DEBUG="false")  # no TLS configured: nothing that would lock clients out
    assert not any(plain[name] for name in SWITCHES)
    debugging = _settings(tmp_path, DEBUG="true", HTTPS="true")
    assert not debugging["SESSION_COOKIE_SECURE"] and not debugging["SECURE_HSTS_SECONDS"]
    # each switch on its own
    chosen = _settings(tmp_path, DEBUG="false", HTTPS="true", SECURE_SSL_REDIRECT="false",
                       SECURE_HSTS_SECONDS="60", SECURE_HSTS_INCLUDE_SUBDOMAINS="false",
                       SECURE_HSTS_PRELOAD="true", CSRF_COOKIE_SECURE="false")
    assert chosen["SECURE_SSL_REDIRECT"] is False and chosen["SECURE_HSTS_SECONDS"] == 60
    assert chosen["SECURE_HSTS_INCLUDE_SUBDOMAINS"] is False and chosen["SECURE_HSTS_PRELOAD"] is True
    assert chosen["CSRF_COOKIE_SECURE"] is False and chosen["SESSION_COOKIE_SECURE"] is True


def test_check_deploy_is_clean_on_the_production_settings(tmp_path):
    clean = manage(fresh_env(tmp_path, **PRODUCTION), "check", "--deploy", "--fail-level", "WARNING")
    assert clean.returncode == 0, clean.stderr
    assert "no issues" in clean.stdout and "W001" not in clean.stderr
    # Without TLS, the checks Django skipped on its false W001/W003 alarm now speak.
    plain = manage(fresh_env(tmp_path, DEBUG="false", SECRET_KEY=STRONG_KEY,
                             ALLOWED_HOSTS="gateway.example.com"), "check", "--deploy")
    for check in ("security.W004", "security.W008", "security.W016"):
        assert check in plain.stderr, plain.stderr
    for false_alarm in ("security.W001", "security.W002", "security.W003", "resilience.W10"):
        assert false_alarm not in plain.stderr


def test_check_deploy_still_reports_missing_security_middleware(settings):
    from resilience.checks import check_deploy_middleware

    settings.MIDDLEWARE = [m for m in settings.MIDDLEWARE if "Security" not in m and "Csrf" not in m]
    ids = {message.id for message in check_deploy_middleware()}
    assert {"resilience.W101", "resilience.W103"} <= ids and "security.W004" not in ids


def test_ssl_redirect_spares_probes_and_scrapes(client, settings):
    settings.SECURE_SSL_REDIRECT = True
    assert client.get("/healthz").status_code == 200
    assert client.get("/admin/login/").status_code == 301
    assert client.get("/admin/login/", secure=True).status_code == 200


def test_hsts_and_secure_cookies_reach_the_browser(client, settings):
    settings.SECURE_HSTS_SECONDS, settings.SECURE_HSTS_INCLUDE_SUBDOMAINS = 31536000, True
    settings.SECURE_HSTS_PRELOAD = settings.CSRF_COOKIE_SECURE = settings.SESSION_COOKIE_SECURE = True
    page = client.get("/admin/login/", secure=True)
    assert page["Strict-Transport-Security"] == "max-age=31536000; includeSubDomains; preload"
    assert page.cookies["csrftoken"]["secure"] is True
    assert "Strict-Transport-Security" not in client.get("/admin/login/")  # never over plain HTTP


@pytest.mark.parametrize("key", ["short-key", "a" * 60, "django-insecure-" + "k3y-Xz9" * 10])
def test_a_weak_secret_key_refuses_to_serve_in_one_line(tmp_path, key):
    env = fresh_env(tmp_path, DEBUG="false", SECRET_KEY=key)
    refused = subprocess.run([sys.executable, "-m", "project.startup"], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=60, check=False)
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cannot serve: resilience.E005: SECRET_KEY is too weak")
    assert key not in refused.stderr  # the key itself is never printed


def test_gunicorn_refuses_a_weak_secret_key(tmp_path):
    gunicorn = Path(sys.executable).with_name("gunicorn")
    env = fresh_env(tmp_path, DEBUG="false", SECRET_KEY="short-key")
    served = subprocess.run([str(gunicorn), "project.asgi:application", "--config", "gunicorn.conf.py",
                             "--bind", f"127.0.0.1:{free_port()}", "--workers", "1"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert served.returncode != 0 and "Traceback" not in served.stderr + served.stdout
    assert len([line for line in served.stderr.splitlines() if "resilience.E005" in line]) == 1


def test_startup_never_prints_a_secret_from_openai_base_url(tmp_path):
    url = "https://user:pw-in-url-5e1@api.example.com/v1?x-code=sk-in-query-77aa"
    env = fresh_env(tmp_path, DEBUG="false", SECRET_KEY=STRONG_KEY, OPENAI_BASE_URL=url)
    refused = subprocess.run([sys.executable, "-m", "project.startup"], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=60, check=False)
    assert refused.returncode == 1 and "aigen.E005" in refused.stderr  # the URL is refused, and named
    assert "api.example.com/v1?x-code=REDACTED" in refused.stderr
    assert "sk-in-query-77aa" not in refused.stderr and "pw-in-url-5e1" not in refused.stderr


def test_a_missing_metrics_folder_is_one_line_not_a_traceback(tmp_path):
    env = fresh_env(tmp_path, DEBUG="false", SECRET_KEY=STRONG_KEY,
                    PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "missing" / "prometheus"))
    refused = subprocess.run([sys.executable, "-m", "project.startup"], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=60, check=False)
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert refused.stderr.startswith("cannot serve: No such file or directory") and \
        len(refused.stderr.strip().splitlines()) == 1


def test_serve_makes_the_metrics_folder_before_anything_starts(tmp_path):
    """`make serve` and gunicorn's start hook create PROMETHEUS_MULTIPROC_DIR before
    the start-up check (which, like every Django process, opens files there)."""
    folder = tmp_path / "missing" / "prometheus"
    planned = subprocess.run(["make", "-n", "serve", f"PROMETHEUS_MULTIPROC_DIR={folder}"], cwd=ROOT,
                             capture_output=True, text=True, timeout=60, check=False).stdout
    assert planned.index("mkdir -p") < planned.index("project.startup") < planned.index("gunicorn")
    gunicorn = Path(sys.executable).with_name("gunicorn")
    port = free_port()
    env = fresh_env(tmp_path, DEBUG="false", SECRET_KEY=STRONG_KEY)
    assert manage(env, "migrate", "--noinput", "-v", "0").returncode == 0
    env["PROMETHEUS_MULTIPROC_DIR"] = str(folder)
    process = subprocess.Popen(
        [str(gunicorn), "project.asgi:application", "--config", "gunicorn.conf.py",
         "--bind", f"127.0.0.1:{port}", "--workers", "1"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and process.poll() is None:
            with contextlib.suppress(requests.ConnectionError, requests.Timeout):
                if requests.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                    break
            time.sleep(0.05)
        assert process.poll() is None, process.communicate(timeout=10)[0][-3000:]
        assert folder.is_dir()
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
    assert "Traceback" not in output, output[-3000:]
