"""Browser tests: Debian's Chromium (never a downloaded one) driven by
playwright against pytest-django's live server.

Missing Chromium or playwright skips on a laptop and fails under CI=true.
While playwright runs, its event loop counts as running in the test's thread,
so Django refuses ORM calls there: do database work before `launch()`, or in
another thread with `off_loop()`.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from tests.resilience import conftest as resilience_fixtures
from tests.support.redis_server import require

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]

# The client tests' policies on the loopback fake upstream (`fake`: tests/conftest.py).
make_upstream = resilience_fixtures.make_upstream


def off_loop(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run `fn` in a fresh thread (no event loop there) and return its result."""
    def run() -> Any:
        from django.db import connection

        try:
            return fn(*args, **kwargs)
        finally:
            connection.close()

    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(run).result()


@pytest.fixture
def fast_passwords(settings):
    # The browser logs in through the real form; the default hasher costs a second per hash.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def launch(live_server) -> Iterator[Callable[..., Any]]:
    """`launch(**context_options)` starts Chromium and returns a new page;
    everything is closed after the test (before the live server stops)."""
    if not os.access(CHROMIUM, os.X_OK):
        require(f"no Chromium at {CHROMIUM} (apt-get install chromium, or set CHROMIUM)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        require("the playwright package is not installed (requirements-dev.txt)")
    running: dict[str, Any] = {}

    def start(**options: Any) -> Any:
        assert not running, "one browser per test"
        running["playwright"] = sync_playwright().start()
        running["browser"] = running["playwright"].chromium.launch(executable_path=CHROMIUM,
                                                                   args=CHROMIUM_ARGS)
        context = running["browser"].new_context(viewport={"width": 1280, "height": 900}, **options)
        context.set_default_timeout(10_000)
        return context.new_page()

    yield start
    if "browser" in running:
        running["browser"].close()
    if "playwright" in running:
        running["playwright"].stop()
