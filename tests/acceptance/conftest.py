"""The acceptance suite: the service attacked the way it will be in
production (see the README's "Acceptance suite" table).

Every test under tests/acceptance/ carries the `acceptance` marker, so
`make accept` (`pytest -m acceptance`) runs the suite alone and `make test`
runs it with the rest.

PostgreSQL fault tests carry the `postgres` marker: on an SQLite run they
are deselected, not skipped (tests/conftest.py; CI=true forbids skips, and
their subject, the project's PostgreSQL settings, is not in play there); the
CI's PostgreSQL run covers them.

Secrets: the session sets known test values for every kind of secret the
service holds (`SECRETS`); tests add what they saw (responses, log lines,
server output, call-log rows) to `exposure`, and test_zz_secrets.py, collected
last, greps all of it. The corpus lives in one test process: under
pytest-xdist, `--dist loadfile` (`make test`) runs the whole suite on one
worker in collection order (tests.support.xdist_scheduler), and the secrets
test checks that every other acceptance test of the run ran before it in its
process.
"""
from __future__ import annotations

import logging
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent

#: Known values for every kind of secret; none may show up anywhere.
SECRETS = {
    "SECRET_KEY": "acceptance-django-secret-Kq7vX2-long-enough-to-serve-0123456789",
    "OPENAI_API_KEY": "sk-acceptance-openai-Zr81Lw",
    "METRICS_TOKEN": "acceptance-metrics-token-Hd3Pq9",
    "UPSTREAM_ACCEPT_KEY": "acceptance-upstream-key-Tb52Mn",
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.acceptance)


class Exposure:
    """Everything the suite saw come out of the service, to grep for secrets."""

    def __init__(self) -> None:
        self.texts: list[tuple[str, str]] = []
        self.tests: set[str] = set()  # the node ids of the tests that ran with this corpus

    def add(self, source: str, text: str | bytes) -> None:
        if isinstance(text, bytes):
            text = text.decode("utf-8", "replace")
        self.texts.append((source, text))

    def add_response(self, source: str, response) -> None:
        headers = "\n".join(f"{k}: {v}" for k, v in response.headers.items())
        self.add(source, f"{response.status_code}\n{headers}\n{response.content!r}")


class _Records(logging.Handler):
    def __init__(self, exposure: Exposure) -> None:
        super().__init__(logging.DEBUG)
        self.exposure = exposure
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.exposure.add(f"log:{record.name}", self.format(record))
        except Exception:  # a record that cannot be formatted is not a secret leak
            self.handleError(record)


@pytest.fixture(scope="session")
def exposure():
    """The session's exposure corpus; every log record of in-process tests lands in it."""
    corpus = Exposure()
    handler = _Records(corpus)
    root = logging.getLogger()
    root.addHandler(handler)
    previous = root.level
    root.setLevel(min(previous or logging.WARNING, logging.INFO))
    yield corpus
    root.removeHandler(handler)
    root.setLevel(previous)


@pytest.fixture(autouse=True)
def _test_secrets(exposure, monkeypatch, settings, request):
    """The known secrets in this process's settings for every acceptance test."""
    exposure.tests.add(request.node.nodeid)
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    settings.RESILIENCE = {**settings.RESILIENCE, "SECRETS": dict(SECRETS),
                           "METRICS_TOKEN": SECRETS["METRICS_TOKEN"]}
    settings.AIGEN = {**settings.AIGEN}
    yield


class Live:
    """The running server (tests.support.live_server) with its fakes and tokens."""

    def __init__(self, server, upstream, provider) -> None:
        self.server, self.upstream, self.provider = server, upstream, provider
        self.url = server.url
        self.user_token = server.token("alice")
        self.staff_token = server.token("root", staff=True)

    def headers(self, *, staff: bool = False) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.staff_token if staff else self.user_token}"}


@pytest.fixture(scope="session")
def live(tmp_path_factory, exposure):
    """One production server for the session's outside-in tests: gunicorn +
    uvicorn workers, the known secrets in its environment, the `openai`
    upstream on a fake provider and a `secured` upstream (bearer credential
    from UPSTREAM_ACCEPT_KEY) on a fake upstream."""
    from tests.support.fake_openai import MODEL_ID, FakeOpenAI
    from tests.support.fake_upstream import FakeUpstream
    from tests.support.live_server import LiveServer

    with FakeUpstream() as upstream, FakeOpenAI() as provider:
        env = {**SECRETS, "OPENAI_BASE_URL": provider.url, "AI_MODEL": MODEL_ID,
               "AI_GENERATE_THROTTLE": "100000/min", "LOG_LEVEL": "DEBUG",
               # Workers re-read the token generation this often (test_tokens_live.py waits it out).
               "TOKEN_CHECK_INTERVAL": "0.1"}
        server = LiveServer(tmp_path_factory.mktemp("live"), env=env)
        with server:
            server.shell(
                "from resilience.models import Upstream;"
                f"Upstream.objects.create(name='secured', base_url={upstream.url!r}, auth_kind='bearer',"
                "auth_env_var='UPSTREAM_ACCEPT_KEY', log_sample_rate=1.0, read_timeout=2.0, deadline=4.0);"
                "print('ok')")
            yield Live(server, upstream, provider)
            # Everything the server wrote while the suite ran, and every call-log row it kept.
            exposure.add("live call log", server.shell(
                "from resilience.telemetry.calllog import call_log_flush;"
                "from resilience.models import CallLog;"
                "print(repr(list(CallLog.objects.values())))"))
        exposure.add("live server output", server.output)
