"""A pytest plugin that puts the aiohttp contender (`bench.aiohttp_contender`)
under the async client's `asend`, to check that it passes the fault suites
unchanged (issue 30):

    CI=true .venv/bin/python -m pytest -p bench.aiohttp_swap tests/resilience/client/ \\
        tests/aigen/edge/ tests/acceptance/test_faults_upstream.py

Only the test process's own calls are swapped (not those of the servers and
workers a test starts); the count printed at the end says how many of the
contender's transports were built.
"""
from __future__ import annotations

from collections.abc import Iterator

import pytest

built: list[int] = []


@pytest.fixture(autouse=True)
def _aiohttp_under_asend(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    import resilience.client.asend as asend
    from bench.aiohttp_contender import Transport

    class Counted(Transport):
        def __init__(self, **kwargs: object) -> None:
            built.append(1)
            super().__init__(**kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(asend, "Transport", Counted)
    yield


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    terminalreporter.write_line(f"aiohttp contender transports built: {len(built)}")
