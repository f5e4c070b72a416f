"""A pytest plugin that puts a contender transport under the async client's
`asend`, to check that it passes the fault suites unchanged (issue 30):

    SWAP_TRANSPORT=aiohttp CI=true .venv/bin/python -m pytest -p bench.transport_swap \\
        tests/resilience/client/ tests/aigen/edge/ tests/acceptance/test_faults_upstream.py

`SWAP_TRANSPORT` names the contender: `aiohttp` (`bench.aiohttp_contender`)
or `httpcore` (`bench.httpcore_contender`, the transport before issue 30).
Only the test process's own calls are swapped (not those of the servers and
workers a test starts); the count printed at the end says how many of the
contender's transports were built.
"""
from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest

CONTENDERS = {"aiohttp": "bench.aiohttp_contender", "httpcore": "bench.httpcore_contender"}

built: list[int] = []


def _contender() -> str:
    name = os.environ.get("SWAP_TRANSPORT", "")
    if name not in CONTENDERS:
        raise pytest.UsageError(f"SWAP_TRANSPORT must be one of {', '.join(CONTENDERS)} (got {name!r})")
    return name


def pytest_configure(config: pytest.Config) -> None:
    _contender()


@pytest.fixture(autouse=True)
def _contender_under_asend(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    import resilience.client.asend as asend

    transport = importlib.import_module(CONTENDERS[_contender()]).Transport

    class Counted(transport):  # type: ignore[misc, valid-type]
        """The contender, counting the calls whose answer is not closed yet
        (`in_use`, as `aionet.Transport` counts its connections held)."""

        def __init__(self, **kwargs: object) -> None:
            built.append(1)
            super().__init__(**kwargs)
            self.in_use = 0

        async def send(self, request: Any, on_close: Callable[[], None]) -> Any:
            self.in_use += 1
            released = False

            def release() -> None:
                nonlocal released
                if not released:
                    released = True
                    self.in_use -= 1
                on_close()

            return await super().send(request, release)

    monkeypatch.setattr(asend, "Transport", Counted)
    yield


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    terminalreporter.write_line(f"{_contender()} contender transports built: {len(built)}")
