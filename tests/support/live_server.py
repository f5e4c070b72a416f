"""The production server as `make serve` starts it (gunicorn managing uvicorn
workers, gunicorn.conf.py), on a database of its own, for tests that attack
the running service from outside: schema fuzzing, abuse, clean shutdown.

    with LiveServer(tmp_path, env={"WORKERS": "1"}, setup="...python before serving...") as server:
        server.url, server.token("alice"), server.token("root", staff=True)
        server.terminate()        # SIGTERM to the master, wait; its exit code

The database is a fresh SQLite file, or, when the run has PostgreSQL
(`DATABASE_URL` names one), a scratch PostgreSQL database
`<run database>_live_<port>` (`<run database>_gw1_live_<port>` in an xdist
worker: migrated.scratch_prefix) created here and dropped afterwards, so the
server sees the same engine as the rest of the run. Either is a copy of the
run's migrated template (tests.support.migrated); `migrate`, `seed_upstreams`
and the `setup` code then run in one Django process before the server starts. Everything the server
prints (its log lines) is collected in `output` for tests that grep it.

Failure behaviour: a server that does not answer `/healthz` within
`start_timeout` seconds fails the test with its output; `stop()` always
reaps the process group, escalating to SIGKILL after `stop_timeout`.
"""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import requests

from tests.support import migrated
from tests.support.redis_server import free_port

ROOT = Path(__file__).resolve().parents[2]


def postgres_url() -> str | None:
    """The run's PostgreSQL URL, or None on an SQLite run."""
    url = os.environ.get("DATABASE_URL", "")
    return url if url.startswith(("postgres://", "postgresql://")) else None


def _admin_connect(url: str):
    import psycopg

    parts = urlsplit(url)
    admin = urlunsplit(parts._replace(path="/postgres"))
    return psycopg.connect(admin, autocommit=True, connect_timeout=10)


class LiveServer:
    """gunicorn + uvicorn workers on a free loopback port (see the module docstring)."""

    start_timeout = 60.0
    stop_timeout = 40.0

    def __init__(self, workdir: Path, *, env: dict[str, str] | None = None, workers: int = 2,
                 setup: str = "") -> None:
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.extra_env = dict(env or {})
        self.workers = workers
        self.setup = setup  # Python run in a Django shell after migrating, before serving
        self.process: subprocess.Popen[str] | None = None
        self._lines: list[str] = []
        self._reader: threading.Thread | None = None
        self._pg_db: str | None = None
        self._tokens: dict[str, str] = {}
        self.env = self._environment()

    # -- set-up ------------------------------------------------------------------------------------
    def _environment(self) -> dict[str, str]:
        metrics_dir = self.workdir / "prometheus"
        metrics_dir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "DEBUG": "false",
               # Long enough to serve (resilience.E005).
               "SECRET_KEY": "acceptance-live-secret-long-enough-to-serve-0123456789abcdef",
               "WORKERS": str(self.workers), "CALL_LOG_FLUSH_INTERVAL": "0.2",
               "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir), "DB_POOL": "false",
               "PYTHONUNBUFFERED": "1"}
        pg = postgres_url()
        if pg:
            parts = urlsplit(pg)
            self._pg_db = f"{migrated.scratch_prefix(pg)}_live_{self.port}"
            env["DATABASE_URL"] = urlunsplit(parts._replace(path=f"/{self._pg_db}"))
        else:
            env["DATABASE_URL"] = f"sqlite:///{self.workdir / 'live.sqlite3'}"
        env.update(self.extra_env)
        return env

    def manage(self, *args: str) -> str:
        done = subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=self.env,
                              capture_output=True, text=True, timeout=180)
        self._lines.extend(done.stderr.splitlines())  # its log lines; stdout is the answer (a token...)
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout

    def shell(self, code: str) -> str:
        """Run Python in a Django shell against the server's database; its last output line."""
        return self.manage("shell", "-c", code).strip().splitlines()[-1]

    def token(self, username: str, *, staff: bool = False) -> str:
        """An API token for `username` (created on first use; `staff`: a superuser, holding
        every permission the staff routes ask)."""
        if username not in self._tokens:
            self._tokens[username] = self.shell(
                "from django.contrib.auth import get_user_model;"
                "from aigen.edge.tokens import token_issue;"
                f"u, _ = get_user_model().objects.get_or_create(username={username!r});"
                f"u.is_staff = u.is_superuser = {staff!r}; u.save();"
                "print(token_issue(user=u, replace=True))")
        return self._tokens[username]

    def fresh_database(self) -> None:
        """The server's database, migrated: the run's scratch PostgreSQL database made
        anew, or the SQLite file (unless one is there), both copied from the template."""
        if self._pg_db:
            migrated.postgres_create(postgres_url(), self._pg_db)
        elif self.env["DATABASE_URL"] == f"sqlite:///{self.workdir / 'live.sqlite3'}":
            migrated.sqlite_copy(self.workdir / "live.sqlite3")

    def prepare(self) -> None:
        """What `make serve` does before serving (migrate, seed the built-in upstreams),
        then the `setup` code: one Django process on a fresh database."""
        self.fresh_database()
        self.shell("from django.core.management import call_command\n"
                   "call_command('migrate', interactive=False, verbosity=0)\n"
                   "call_command('seed_upstreams')\n"
                   + (self.setup + "\n" if self.setup else "") + "print('set up')")

    def start(self) -> LiveServer:
        self.prepare()
        gunicorn = Path(sys.executable).with_name("gunicorn")
        self.process = subprocess.Popen(
            [str(gunicorn), "project.asgi:application", "--config", "gunicorn.conf.py",
             "--bind", f"127.0.0.1:{self.port}"], cwd=ROOT, env=self.env, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, start_new_session=True)
        self._reader = threading.Thread(target=self._read, args=(self.process,), daemon=True)
        self._reader.start()
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            try:
                if requests.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return self
            except (requests.ConnectionError, requests.Timeout):  # workers still booting
                time.sleep(0.1)
        self.stop()
        raise AssertionError("the server did not start:\n" + self.output[-4000:])

    def _read(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            self._lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self._lines)

    # -- tear-down ---------------------------------------------------------------------------------
    def terminate(self) -> int:
        """SIGTERM to the gunicorn master (what a supervisor sends); wait for it; its exit code."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout=self.stop_timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            code = self.process.wait(timeout=10)
        if self._reader is not None:
            self._reader.join(timeout=5)
        return code

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            self.terminate()
        self.drop_database()

    def drop_database(self) -> None:
        """The run's scratch PostgreSQL database, dropped (a subclass's `stop` calls it too)."""
        if self._pg_db:
            with contextlib.suppress(Exception), _admin_connect(postgres_url()) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{self._pg_db}" WITH (FORCE)')
            self._pg_db = None

    def __enter__(self) -> LiveServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
