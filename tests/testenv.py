"""Test-run environment, set before Django reads its settings.

Loaded as an early plugin (`-p tests.testenv` in pyproject.toml): pytest-django
reads the settings before any conftest.py runs, so a conftest is too late.

Tests use a Redis database of their own (TEST_REDIS_DB, default 15) so a run
never touches the data of a service sharing the server.
"""
import os

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
_test_db = os.environ.get("TEST_REDIS_DB", "15")
if os.environ.get("REDIS_URL"):
    from urllib.parse import urlsplit, urlunsplit

    _parts = urlsplit(os.environ["REDIS_URL"])
    os.environ["REDIS_URL"] = urlunsplit(_parts._replace(path=f"/{_test_db}"))
os.environ.setdefault("TEST_REDIS_URL", f"redis://127.0.0.1:6379/{_test_db}")
