"""Migrated databases for the servers and worker processes tests start: the
schema is migrated once per test run (by `manage.py migrate` in a process of
its own, on the run's engine) and copied for each server or worker, instead of
each one running every migration from an empty database.

    sqlite_copy(path)                 # a migrated SQLite file at `path`
    postgres_create(admin_url, name)  # a migrated PostgreSQL database `name`

SQLite: the template is a file in a temporary folder, copied byte for byte.
PostgreSQL: the template is a database `<run database>_template`, and each
copy is `CREATE DATABASE ... TEMPLATE` (a file-level copy on the server).
Under pytest-xdist each worker is a test process of its own, with its own
template (`<run database>_gw1_template`; `scratch_prefix`): one worker
replacing a template left by an earlier run must not drop its sibling's.
Both are made on first use, from the checkout's migrations as they are now,
and removed when the test process exits. The copy is what `migrate` would have
left (post-migrate receivers included, with the run's environment); servers
and workers still run `migrate` themselves, which finds nothing to apply.
"""
from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parents[2]

_lock = threading.Lock()
_templates: dict[str, str] = {}


def _migrate(database_url: str) -> None:
    env = {**os.environ, "DATABASE_URL": database_url, "DEBUG": "false", "DB_POOL": "false",
           "SECRET_KEY": "migrated-template-secret-long-enough-to-serve-0123456789abcdef"}
    done = subprocess.run([sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def sqlite_template() -> Path:
    """The run's migrated SQLite file (made on first use)."""
    with _lock:
        if "sqlite" not in _templates:
            folder = tempfile.mkdtemp(prefix="migrated-")
            atexit.register(shutil.rmtree, folder, True)
            path = Path(folder) / "template.sqlite3"
            _migrate(f"sqlite:///{path}")
            _templates["sqlite"] = str(path)
        return Path(_templates["sqlite"])


def sqlite_copy(target: str | Path) -> None:
    """A migrated SQLite database at `target`, unless a file is there already."""
    target = Path(target)
    if not target.exists():
        shutil.copyfile(sqlite_template(), target)


def _admin_connect(url: str):
    import psycopg

    admin = urlunsplit(urlsplit(url)._replace(path="/postgres"))
    return psycopg.connect(admin, autocommit=True, connect_timeout=10)


def _drop_postgres(url: str, name: str) -> None:
    with contextlib.suppress(Exception), _admin_connect(url) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def scratch_prefix(url: str) -> str:
    """The start of the names of this test process's scratch databases next to the
    database `url` names: that database's name, then the xdist worker's (`postgres_gw1`)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    name = urlsplit(url).path.lstrip("/") or "postgres"
    return f"{name}_{worker}" if worker else name


def postgres_template(url: str) -> str:
    """The name of the test process's migrated PostgreSQL template database (made on
    first use, next to the database `url` names; one left by an earlier run is replaced)."""
    with _lock:
        if "postgres" not in _templates:
            parts = urlsplit(url)
            name = f"{scratch_prefix(url)}_template"
            _drop_postgres(url, name)
            with _admin_connect(url) as conn:
                conn.execute(f'CREATE DATABASE "{name}"')
            atexit.register(_drop_postgres, url, name)
            _migrate(urlunsplit(parts._replace(path=f"/{name}")))
            _templates["postgres"] = name
        return _templates["postgres"]


def postgres_create(url: str, name: str) -> None:
    """`name` made anew as a copy of the migrated template (`url`: any database on the server)."""
    template = postgres_template(url)
    with _admin_connect(url) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
