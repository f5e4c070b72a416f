"""Test-run environment, set before Django reads its settings.

Loaded as an early plugin (`-p tests.testenv` in pyproject.toml): pytest-django
reads the settings before any conftest.py runs, so a conftest is too late.

Tests use a Redis database of their own (TEST_REDIS_DB, default 15) so a run
never touches the data of a service sharing the server. Tests flush it, so
each test process has its own: under pytest-xdist, worker gwN takes the
database N below TEST_REDIS_DB (`make test`'s two workers: 15 and 14). The
database is always that number, on the server TEST_REDIS_URL names (default
127.0.0.1:6379) and on REDIS_URL's when a run has one. xdist sets
PYTEST_XDIST_WORKER before its worker loads this plugin, and a worker inherits
the environment this module wrote in the controlling process, so every value
here is derived from TEST_REDIS_DB and the worker's name, never from what an
earlier import wrote.
"""
import os
from urllib.parse import urlsplit, urlunsplit

os.environ.setdefault("SECRET_KEY", "test-only-secret-key-long-enough-to-serve-0123456789abcdef")  # E005
os.environ.setdefault("DEBUG", "false")
os.environ.setdefault("CACHE_KEY_PREFIX", "rsltest")
# Tests start from empty upstream tables (fixtures create what they need);
# tests/test_setup.py checks the seeding migrate does in a real process.
os.environ.setdefault("SEED_UPSTREAMS_ON_MIGRATE", "false")
# Call logs are flushed explicitly in tests (no writer thread racing the test DB).
os.environ.setdefault("CALL_LOG_FLUSH_INTERVAL", "0")
# Generation records too: a writer thread's INSERT racing a test's own writes on
# SQLite's shared in-memory test database fails with "database table is locked".
os.environ.setdefault("AI_RECORD_FLUSH_INTERVAL", "0")
# Tests move a connection's host and port to cut the database on purpose; a
# psycopg pool would keep its connections to the old address. (The ASGI
# server test runs the pool-free SQLite path; the pool is psycopg's own.)
os.environ.setdefault("DB_POOL", "false")
_worker = os.environ.get("PYTEST_XDIST_WORKER", "")  # "gw0", "gw1"... in an xdist worker
_test_db = int(os.environ.get("TEST_REDIS_DB", "15")) - int(_worker.removeprefix("gw") or 0)
if _test_db < 1:
    # Database 0 is the one a service's REDIS_URL usually names, and tests flush theirs.
    raise RuntimeError(f"TEST_REDIS_DB={os.environ.get('TEST_REDIS_DB', '15')} gives "
                       f"{'xdist worker ' + _worker if _worker else 'the run'} Redis database {_test_db}: "
                       "tests flush theirs; raise TEST_REDIS_DB or run fewer workers")


def _on_test_db(url: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{_test_db}"))


if os.environ.get("REDIS_URL"):
    os.environ["REDIS_URL"] = _on_test_db(os.environ["REDIS_URL"])
os.environ["TEST_REDIS_URL"] = _on_test_db(os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379"))
