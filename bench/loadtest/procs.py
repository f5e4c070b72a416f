"""The processes of a load run: the provider, the server under test, LiteLLM.

Each runs in its own process group (`start_new_session`), started as its users
start it, and is torn down as a group (SIGTERM, then SIGKILL after a grace
period), so no worker outlives the run. `TreeMeter` measures a server's whole
process tree (the master and every worker, whatever spawned them): CPU time
(user + system) over a scenario and the peak PSS, sampled from a thread.
"""
from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from bench.loadtest.driver import CACHED_MODEL

ROOT = Path(__file__).resolve().parents[2]
LITELLM_VENV = Path(os.environ.get("LITELLM_VENV", "/tmp/litellm-venv"))
LITELLM_SPEC = os.environ.get("LITELLM_SPEC", "litellm[proxy]")


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_http(url: str, *, timeout: float, headers: dict[str, str] | None = None,
              proc: subprocess.Popen | None = None) -> None:
    """Poll `url` until it answers 200; raises RuntimeError on timeout or when `proc` exits."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} answered")
        try:
            request = urllib.request.Request(url, headers=headers or {})
            with urllib.request.urlopen(request, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError as err:  # refused while starting, HTTPError for 4xx/5xx
            last = err
        time.sleep(0.25)
    raise RuntimeError(f"{url} did not answer 200 within {timeout:.0f} s (last: {last})")


@dataclass
class Group:
    """A command in its own process group, output to a log file."""

    argv: list[str]
    env: dict[str, str]
    log: Path
    cwd: Path = ROOT
    proc: subprocess.Popen | None = None

    def start(self) -> Group:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(self.argv, cwd=self.cwd, env=self.env, stdout=out,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)
        return self

    def stop(self, grace: float = 20.0) -> None:
        if self.proc is None:
            return
        pgid = self.proc.pid  # session leader: its pid is the group id
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
        # Workers may outlive the leader briefly; the group goes in any case.
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and _group_alive(pgid):
            time.sleep(0.1)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)
        self.proc = None

    def pids(self) -> list[int]:
        """The leader and all its descendants now."""
        if self.proc is None:
            return []
        try:
            leader = psutil.Process(self.proc.pid)
            return [leader.pid] + [child.pid for child in leader.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


@dataclass
class TreeMeter:
    """CPU seconds and peak PSS of a process group's tree over one scenario.

    CPU: every pid's user+system time is read when first seen and last seen;
    the sum of the differences is the tree's CPU over the window (a worker
    started meanwhile counts from zero). PSS: the sum over the tree, sampled
    every `interval` seconds from a thread; the peak is kept.
    """

    group: Group | None
    interval: float = 0.5
    first: dict[int, float] = field(default_factory=dict)
    last: dict[int, float] = field(default_factory=dict)
    peak_pss: int = 0
    _since: float = 0.0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> TreeMeter:
        if self.group is None:
            return self
        self._sample(baseline=True)
        self._thread = threading.Thread(target=self._run, name="tree-meter", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join(timeout=10)
        self._sample()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def _sample(self, *, baseline: bool = False) -> None:
        total_pss = 0
        for pid in self.group.pids():
            try:
                proc = psutil.Process(pid)
                times = proc.cpu_times()
                cpu = times.user + times.system
                if not baseline and pid not in self.first:
                    self.first[pid] = 0.0 if proc.create_time() > self._since else cpu
                self.first.setdefault(pid, cpu)
                self.last[pid] = cpu
                total_pss += proc.memory_full_info().pss
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
        if baseline:
            self._since = time.time()
        self.peak_pss = max(self.peak_pss, total_pss)

    @property
    def cpu_seconds(self) -> float | None:
        if self.group is None:
            return None
        return sum(self.last[pid] - self.first.get(pid, 0.0) for pid in self.last)

    @property
    def pss_bytes(self) -> int | None:
        return None if self.group is None else self.peak_pss


class ProviderProcess:
    """`python -m bench.loadtest.provider` on a free port, in its own process."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.group = Group([sys.executable, "-m", "bench.loadtest.provider", "--port", str(self.port)],
                           env=dict(os.environ), log=workdir / "provider.log")

    def start(self) -> ProviderProcess:
        group = self.group.start()
        _up_or_stopped(group, lambda: wait_http(self.url + "/v1/models", timeout=30, proc=group.proc))
        return self

    def stop(self) -> None:
        self.group.stop(grace=5)


class GatewayServer:
    """This project exactly as `make serve` runs it, prepared for the load.

    A fresh SQLite database in `workdir` (or `database_url`), Redis on
    `redis_url` under a cache prefix of its own (no state from earlier runs:
    breakers, versions, cached answers), the `openai` upstream pointed at the
    provider with a pool, timeouts and deadline fit for 10 s streams and no
    retries, a user with a token, and the generate throttle raised
    (AI_GENERATE_THROTTLE).
    """

    name = "this project"

    def __init__(self, workdir: Path, *, provider_url: str, redis_url: str,
                 database_url: str = "", make_target: str = "serve", extra_env: dict[str, str] | None = None
                 ) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.make_target = make_target
        prefix = f"lt{secrets.token_hex(4)}"
        self.env = {
            **os.environ,
            "DEBUG": "false",
            "SECRET_KEY": secrets.token_urlsafe(40),
            "DATABASE_URL": database_url or f"sqlite:///{workdir / 'gateway.sqlite3'}",
            "REDIS_URL": redis_url,
            "CACHE_KEY_PREFIX": prefix,
            "OPENAI_API_KEY": "sk-loadtest-dummy",
            "OPENAI_BASE_URL": provider_url + "/v1",
            "AI_GENERATE_THROTTLE": "1000000/min",
            "PROMETHEUS_MULTIPROC_DIR": str(workdir / "prometheus"),
            "LOG_LEVEL": "WARNING",
            **(extra_env or {}),
        }
        self.env.pop("MAKEFLAGS", None)
        self.env.pop("MAKELEVEL", None)
        self.provider_url = provider_url
        self.group: Group | None = None
        self.token = ""
        # prometheus_client opens its files at import (django-rq's collector), so the
        # folder must exist before the first manage.py command.
        (workdir / "prometheus").mkdir(parents=True, exist_ok=True)

    def _manage(self, *args: str) -> str:
        done = subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=self.env,
                              capture_output=True, text=True, timeout=300)
        if done.returncode:
            raise RuntimeError(f"manage.py {args[0]} failed:\n{done.stdout}\n{done.stderr}")
        return done.stdout

    def prepare(self) -> None:
        self._manage("migrate", "--noinput", "-v", "0")
        self._manage("seed_upstreams")
        self._manage("shell", "-c", (
            "from resilience.models import Upstream\n"
            "from django.contrib.auth import get_user_model\n"
            "u = Upstream.objects.get(name='openai')\n"
            f"u.base_url = {self.provider_url + '/v1'!r}\n"
            "u.pool_size = 1000; u.connect_timeout = 10.0; u.read_timeout = 120.0; u.deadline = 300.0\n"
            "u.retry_total = 0\n"
            "u.full_clean(validate_unique=False); u.save()\n"
            # The cached scenario's model: the same provider through an upstream that caches answers.
            "Upstream.objects.filter(name='openai-cached').delete()\n"
            "u.pk = None; u.name = 'openai-cached'\n"
            f"u.served_models = [{CACHED_MODEL!r}]; u.cache_ttl = 3600; u.cache_methods = ['POST']\n"
            "u.full_clean(validate_unique=False); u.save()\n"
            "User = get_user_model()\n"
            "User.objects.filter(username='loadtest').exists() or "
            "User.objects.create_user('loadtest', password=None)\n"))
        # --reset: each contender starts a server on the same database, and a user has one token.
        self.token = self._manage("issue_token", "loadtest", "--reset").strip().splitlines()[-1]

    def make_argv(self) -> list[str]:
        """`make serve` in the environment this tool runs in (not a `.venv`
        the checkout may not have): its interpreter's prefix and bin folder."""
        return ["make", "--no-print-directory", self.make_target, "HOST=127.0.0.1", f"PORT={self.port}",
                f"VENV={sys.prefix}", f"BIN={Path(sys.executable).parent}"]

    def start(self) -> GatewayServer:
        self.prepare()
        group = self.group = Group(self.make_argv(), env=self.env, log=self.workdir / "gateway.log").start()
        _up_or_stopped(group, lambda: wait_http(self.url + "/healthz", timeout=180, proc=group.proc))
        return self

    def stop(self) -> None:
        if self.group is not None:
            self.group.stop(grace=35)  # gunicorn's graceful_timeout is 30 s


class LiteLLMServer:
    """The LiteLLM proxy from a throwaway venv outside the repo, pointed at the provider.

    `pip install 'litellm[proxy]'` into LITELLM_VENV (default /tmp/litellm-venv)
    when its `litellm` command is missing; started with `litellm --config`
    as its docs show, a master key so requests check a credential, the local
    model cost map (offline), and `workers` uvicorn workers.
    """

    def __init__(self, workdir: Path, *, provider_url: str, workers: int) -> None:
        self.workdir = workdir
        self.workers = workers
        self.name = f"LiteLLM {workers}w"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.token = "sk-loadtest-" + secrets.token_hex(8)
        self.provider_url = provider_url
        self.group: Group | None = None

    @staticmethod
    def install(log: Path) -> Path:
        binary = LITELLM_VENV / "bin" / "litellm"
        if binary.exists():
            return binary
        print(f"installing {LITELLM_SPEC} into {LITELLM_VENV} (once; log: {log}) ...", flush=True)
        with open(log, "ab") as out:
            subprocess.run([sys.executable, "-m", "venv", str(LITELLM_VENV)], check=True, stdout=out,
                           stderr=subprocess.STDOUT, timeout=300)
            subprocess.run([str(LITELLM_VENV / "bin" / "python"), "-m", "pip", "install", "-q",
                            "--disable-pip-version-check", LITELLM_SPEC], check=True, stdout=out,
                           stderr=subprocess.STDOUT, timeout=1800)
        return binary

    def start(self) -> LiteLLMServer:
        binary = self.install(self.workdir / "litellm-install.log")
        config = self.workdir / f"litellm-{self.workers}w.yaml"
        config.write_text(
            "model_list:\n"
            "  - model_name: gpt-4o-mini\n"
            "    litellm_params:\n"
            "      model: openai/gpt-4o-mini\n"
            f"      api_base: {self.provider_url}/v1\n"
            "      api_key: sk-loadtest-dummy\n"
            "general_settings:\n"
            f"  master_key: {self.token}\n")
        env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR",
               "NO_DOCS": "True"}
        argv = [str(binary), "--config", str(config), "--host", "127.0.0.1", "--port", str(self.port),
                "--num_workers", str(self.workers)]
        group = self.group = Group(argv, env=env, log=self.workdir / f"litellm-{self.workers}w.log").start()
        _up_or_stopped(group, lambda: wait_http(self.url + "/v1/models", timeout=240, proc=group.proc,
                                                headers={"Authorization": f"Bearer {self.token}"}))
        return self

    def stop(self) -> None:
        if self.group is not None:
            self.group.stop(grace=15)


def _up_or_stopped(group: Group, wait: Callable[[], None]) -> None:
    """`wait` for a server just started; if it never comes up, stop its whole
    process group before raising (a server left running loads every later run)."""
    try:
        wait()
    except BaseException:
        group.stop(grace=5)
        raise


def make_workdir() -> Path:
    return Path(tempfile.mkdtemp(prefix="loadtest-"))


def remove_workdir(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
