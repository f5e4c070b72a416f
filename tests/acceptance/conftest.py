"""The acceptance suite: the service attacked the way it will be in
production (see the README's "Acceptance suite" table).

Every test under tests/acceptance/ carries the `acceptance` marker, so
`make accept` (`pytest -m acceptance`) runs the suite alone and `make test`
runs it with the rest.

PostgreSQL fault tests exist only on a run whose DATABASE_URL is PostgreSQL:
on an SQLite run they are not collected (CI=true forbids skips, and their
subject, the project's PostgreSQL settings, is not in play there); the CI's
PostgreSQL run covers them.

Secrets: the session sets known test values for every kind of secret the
service holds (`SECRETS`); tests add what they saw (responses, log lines,
server output, call-log rows) to `exposure`, and test_zz_secrets.py, collected
last, greps all of it.
"""
from __future__ import annotations

import logging
from pathlib import Path

import pytest

from tests.support.live_server import postgres_url

HERE = Path(__file__).resolve().parent

#: Known values for every kind of secret; none may show up anywhere.
SECRETS = {
    "SECRET_KEY": "acceptance-django-secret-Kq7vX2",
    "OPENAI_API_KEY": "sk-acceptance-openai-Zr81Lw",
    "METRICS_TOKEN": "acceptance-metrics-token-Hd3Pq9",
    "ACCEPT_UPSTREAM_KEY": "acceptance-upstream-key-Tb52Mn",
}

collect_ignore = [] if postgres_url() else ["test_faults_postgres.py"]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.acceptance)


class Exposure:
    """Everything the suite saw come out of the service, to grep for secrets."""

    def __init__(self) -> None:
        self.texts: list[tuple[str, str]] = []

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
def _test_secrets(exposure, monkeypatch, settings):
    """The known secrets in this process's settings for every acceptance test."""
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    settings.RESILIENCE = {**settings.RESILIENCE, "SECRETS": dict(SECRETS),
                           "METRICS_TOKEN": SECRETS["METRICS_TOKEN"]}
    settings.AIGEN = {**settings.AIGEN}
    yield
