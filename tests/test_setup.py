"""A newcomer's path, in real processes: the README's commands on a fresh
database with nothing set but the database, and the servers refusing, in one
line, to serve without a secret."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.support.redis_server import free_port

ROOT = Path(__file__).resolve().parent.parent
# What a fresh clone's shell does not have.
UNSET = ("DEBUG", "SECRET_KEY", "REDIS_URL", "SEED_UPSTREAMS_ON_MIGRATE", "OPENAI_BASE_URL",
         "OPENAI_API_KEY", "DJANGO_SETTINGS_MODULE", "LOG_LEVEL")


def fresh_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in UNSET}
    env.update({"DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}", **extra})
    return env


def manage(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout, check=False)


def assert_one_line_refusal(result: subprocess.CompletedProcess) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr + result.stdout
    lines = [line for line in result.stderr.splitlines() if "SECRET_KEY" in line]
    assert len(lines) == 1, result.stderr
    assert "resilience.E001" in lines[0] and "Set the SECRET_KEY environment variable" in lines[0]


def test_readme_commands_work_without_debug_or_secret(tmp_path):
    env = fresh_env(tmp_path)
    migrated = manage(env, "migrate", "--noinput")
    assert migrated.returncode == 0, migrated.stderr
    # migrate seeded the built-in upstreams: no 502 "no upstream named 'openai'"
    listed = manage(env, "upstreams")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.split()[0] != "no" and "openai" in listed.stdout
    created = manage({**env, "DJANGO_SUPERUSER_PASSWORD": "a-long-passphrase-9"},
                     "createsuperuser", "--noinput", "--username", "admin", "--email", "a@example.com")
    assert created.returncode == 0, created.stderr
    token = manage(env, "issue_token", "admin")
    assert token.returncode == 0, token.stderr
    # The token alone, first: no log lines before (or after) a command's output.
    assert len(token.stdout.strip()) == 40 and token.stdout.strip().isalnum(), token.stdout
    assert " INFO " not in token.stderr and " WARNING " not in token.stderr, token.stderr
    seeded = manage(env, "seed_upstreams")
    assert seeded.returncode == 0 and seeded.stdout == "all built-in upstreams exist\n"
    assert seeded.stderr == ""


def test_servers_refuse_in_one_line_without_a_secret(tmp_path):
    env = fresh_env(tmp_path)
    assert_one_line_refusal(subprocess.run([sys.executable, "-m", "project.startup"], cwd=ROOT, env=env,
                                           capture_output=True, text=True, timeout=60, check=False))
    assert_one_line_refusal(manage(env, "runserver", "--noreload", f"127.0.0.1:{free_port()}", timeout=60))
    gunicorn = Path(sys.executable).with_name("gunicorn")
    served = subprocess.run([str(gunicorn), "project.asgi:application", "--config", "gunicorn.conf.py",
                             "--bind", f"127.0.0.1:{free_port()}", "--workers", "1"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert_one_line_refusal(served)
    # `manage.py check --deploy` names it as well
    checked = manage(env, "check", "--deploy")
    assert checked.returncode != 0 and "resilience.E001" in checked.stderr


def test_with_a_secret_the_startup_check_passes(tmp_path):
    env = fresh_env(tmp_path, SECRET_KEY="a-real-secret-for-this-test-only-0123456789-long-enough")
    result = subprocess.run([sys.executable, "-m", "project.startup"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


def test_development_mode_serves_without_a_secret(tmp_path):
    result = subprocess.run([sys.executable, "-m", "project.startup"], cwd=ROOT,
                            env=fresh_env(tmp_path, DEBUG="true"), capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stderr


def test_a_django_request_warning_is_printed_once(tmp_path):
    # Django's own console handler (DEBUG only) printed each one a second time.
    env = fresh_env(tmp_path, DEBUG="true")
    script = ("from django.test import Client; "
              "Client().get('/no-such-page-for-the-log', HTTP_HOST='127.0.0.1')")
    result = manage(env, "shell", "-c", script, timeout=60)
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if "Not Found: /no-such-page-for-the-log" in line]
    assert len(lines) == 1, result.stderr
    assert " WARNING [" in lines[0]  # and the process id says which worker


def test_pytest_alone_finds_the_tests_package():
    # Issue 25, item 8: `.venv/bin/pytest` failed with "No module named 'tests'"
    # (only `python -m pytest`, which puts the working folder on sys.path, worked).
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    done = subprocess.run([str(Path(sys.executable).with_name("pytest")), "--collect-only", "-q",
                           "tests/aigen/test_urls.py"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 tests collected" in done.stdout
