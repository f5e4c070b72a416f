"""Shared benchmark plumbing: Django set-up on a scratch database, interleaved
timing rounds (so drift hits every contender alike) and table printing."""
from __future__ import annotations

import asyncio
import os
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable

_ready = False


def django_setup(**env: str) -> None:
    """Configure Django for a benchmark process (a scratch SQLite file)."""
    global _ready
    if _ready:
        return
    scratch = tempfile.mkdtemp(prefix="bench-")
    defaults = {
        "DJANGO_SETTINGS_MODULE": "project.settings",
        "SECRET_KEY": "bench-only",
        "DEBUG": "false",
        "DATABASE_URL": f"sqlite:///{scratch}/bench.sqlite3",
        "LOG_LEVEL": "WARNING",
        "CACHE_KEY_PREFIX": "rslbench",
    }
    for key, value in {**defaults, **env}.items():
        os.environ.setdefault(key, value)
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0)
    # Benchmarks are batch work: on limited endpoints they wait behind interactive callers.
    from resilience.client.context import current_priority

    current_priority.set("low")
    _ready = True


def per_op(fn: Callable[[], object], n: int) -> float:
    """Seconds per call of `fn`, over `n` calls."""
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n


def compare(contenders: dict[str, Callable[[], object]], *, n: int, rounds: int = 7,
            warmup: int = 50) -> dict[str, float]:
    """Median seconds per op of each contender, measured in interleaved rounds."""
    for fn in contenders.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, fn in contenders.items():
            samples[name].append(per_op(fn, n))
    return {name: statistics.median(values) for name, values in samples.items()}


def paired_ratio(contender: Callable[[], object], baseline: Callable[[], object], *, n: int = 300,
                 rounds: int = 41, warmup: int = 200) -> tuple[float, float, float]:
    """Median of per-round time ratios contender/baseline over many short,
    alternating rounds: both see the same moment's machine, so drift cancels.
    Returns (ratio, contender seconds per op, baseline seconds per op)."""
    for _ in range(warmup):
        contender()
        baseline()
    ratios, mine, theirs = [], [], []
    for index in range(rounds):
        first, second = (contender, baseline) if index % 2 else (baseline, contender)
        a, b = per_op(first, n), per_op(second, n)
        c, base = (a, b) if first is contender else (b, a)
        ratios.append(c / base)
        mine.append(c)
        theirs.append(base)
    return statistics.median(ratios), statistics.median(mine), statistics.median(theirs)


class LoopLag:
    """While entered (on a running loop): the longest a 1 ms sleep on the
    loop overslept, `worst` (what other requests on that loop felt)."""

    def __init__(self) -> None:
        self.worst = 0.0
        self._task: asyncio.Task[None] | None = None

    async def _tick(self) -> None:
        while True:
            before = time.perf_counter()
            await asyncio.sleep(0.001)
            self.worst = max(self.worst, time.perf_counter() - before - 0.001)

    def __enter__(self) -> LoopLag:
        self._task = asyncio.get_running_loop().create_task(self._tick())
        return self

    def __exit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()


async def async_per_op(op: Callable[[], Awaitable[object]], n: int, concurrent: int) -> float:
    """Wall seconds per `await op()`, `n` of them run `concurrent` at a time."""
    async def worker(count: int) -> None:
        for _ in range(count):
            await op()

    start = time.perf_counter()
    await asyncio.gather(*(worker(n // concurrent) for _ in range(concurrent)))
    return (time.perf_counter() - start) / (n // concurrent * concurrent)


async def async_paired(contenders: dict[str, Callable[[], Awaitable[object]]], baseline: str, *, n: int,
                       rounds: int, concurrent: int) -> dict[str, tuple[float, float, float]]:
    """name -> (median seconds per op, median ratio to the baseline's round,
    worst loop lag), measured in alternating rounds so drift hits all alike."""
    for op in contenders.values():
        await async_per_op(op, 64, min(concurrent, 64))
    times: dict[str, list[float]] = {name: [] for name in contenders}
    ratios: dict[str, list[float]] = {name: [] for name in contenders}
    lags = dict.fromkeys(contenders, 0.0)
    names = list(contenders)
    for index in range(rounds):
        order = names if index % 2 else list(reversed(names))
        measured = {}
        for name in order:
            with LoopLag() as lag:
                measured[name] = await async_per_op(contenders[name], n, concurrent)
            lags[name] = max(lags[name], lag.worst)
        for name, seconds in measured.items():
            times[name].append(seconds)
            ratios[name].append(seconds / measured[baseline])
    return {name: (statistics.median(times[name]), statistics.median(ratios[name]), lags[name])
            for name in names}


def fmt_time(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} µs"
    return f"{seconds * 1e3:.2f} ms"


def table(title: str, header: tuple[str, ...], rows: list[tuple[object, ...]]) -> None:
    print(f"\n### {title}\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for row in rows:
        print("| " + " | ".join(str(c) for c in row) + " |")


def verdict(ok: bool) -> str:
    return "meets target" if ok else "MISSES target"


class Nginx:
    """A throwaway nginx on a free loopback port answering every path with a
    small JSON body (keep-alive on): the fastest real upstream to put the
    client's own cost in view. `Nginx.available()` is False without the
    binary (Debian's nginx-light); callers fall back to the Python fake."""

    def __init__(self) -> None:
        import shutil
        import socket
        import tempfile

        self.binary = shutil.which("nginx") or "/usr/sbin/nginx"
        self.dir = tempfile.mkdtemp(prefix="bench-nginx-")
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = None

    @staticmethod
    def available() -> bool:
        import shutil

        return bool(shutil.which("nginx") or os.path.exists("/usr/sbin/nginx"))

    def start(self) -> Nginx:
        import subprocess
        import time as _time
        import urllib.request

        conf = os.path.join(self.dir, "nginx.conf")
        with open(conf, "w") as fh:
            temp = " ".join(f"{kind}_temp_path {self.dir};" for kind in
                            ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
            fh.write(f"""daemon off; worker_processes 1; pid {self.dir}/nginx.pid;
error_log {self.dir}/error.log;
events {{ worker_connections 1024; }}
http {{ access_log off; keepalive_requests 100000; {temp}
  server {{ listen 127.0.0.1:{self.port};
    location / {{ default_type application/json; return 200 '{{"ok": true}}'; }} }} }}
""")
        self.process = subprocess.Popen([self.binary, "-c", conf, "-p", self.dir])
        for _ in range(100):
            try:
                urllib.request.urlopen(self.url + "/", timeout=0.2).read()
                return self
            except OSError:
                _time.sleep(0.05)
        raise RuntimeError("nginx did not start")

    def stop(self) -> None:
        import shutil

        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=5)
        shutil.rmtree(self.dir, ignore_errors=True)
