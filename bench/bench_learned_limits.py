"""Redis round trips per call (every request the worker's redis-py connections send: a command, a
pipeline or a script's EVALSHA is one), on a redis-server of this benchmark's own, with the commands
Redis ran for them (INFO commandstats: a script's own commands included), for calls a fresh worker
makes after another worker learned an endpoint's limits from its provider's headers:

- a single-URL upstream without limits (nothing announced): the hot path of most calls;
- a pool of two endpoints without limits (its shared cooldowns read every 0.25 s);
- a single-URL upstream whose provider announces its limits (`x-ratelimit-*`), learned by another
  process before this one starts.

A count, not a timing: it says whether sharing the learned limits added a round trip to a call.
Run it from the checkout to measure (`--root`, default this one) to compare two versions:

    python -m bench.bench_learned_limits [--root /path/to/checkout] [--calls 300]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
UPSTREAMS = ("open", "pool", "announced")


def _worker(mode: str, calls: int, urls: dict[str, str]) -> dict[str, object]:
    """In a worker process: set up (mode `setup`), learn (`learn`: one call each) or count (`count`)."""
    import django
    from django.core.management import call_command

    django.setup()
    from resilience import upstream
    from resilience.models import Endpoint, Upstream

    if mode == "setup":
        call_command("migrate", verbosity=0)
        common = {"retry_total": 0, "read_timeout": 5, "deadline": 10, "log_sample_rate": 0.0,
                  "breaker_enabled": False}
        Upstream.objects.create(name="open", base_url=urls["plain"], **common)
        pool = Upstream.objects.create(name="pool", base_url=urls["plain"], **common)
        for name in ("a", "b"):
            Endpoint.objects.create(upstream=pool, name=name, base_url=urls["plain"])
        Upstream.objects.create(name="announced", base_url=urls["announcing"], **common)
        return {}
    import redis
    from redis.connection import AbstractConnection

    sent = [0]
    if mode == "learn":
        for name in UPSTREAMS:
            upstream(name).post("/v1/chat/completions", json=BODY).close()
        return {}
    send = AbstractConnection.send_packed_command

    def counted(self, command, check_health=True):  # one request on the wire: one round trip
        sent[0] += 1
        return send(self, command, check_health)

    AbstractConnection.send_packed_command = counted  # instrumentation of this process only
    counter = redis.Redis.from_url(os.environ["REDIS_URL"])
    out: dict[str, object] = {}
    for name in UPSTREAMS:
        first = sent[0]
        client = upstream(name)
        client.post("/v1/chat/completions", json=BODY).close()  # built; the first call made
        first = sent[0] - first
        counter.config_resetstat()
        before = sent[0]
        for _ in range(calls):
            client.post("/v1/chat/completions", json=BODY).close()
        trips = sent[0] - before
        stats = counter.info("commandstats")
        by_command = {k.removeprefix("cmdstat_"): round(int(v["calls"]) / calls, 3)
                      for k, v in stats.items() if k not in ("cmdstat_info", "cmdstat_config|resetstat")}
        out[name] = {"first": first, "per_call": round(trips / calls, 3), "by_command": by_command}
    return out


def _run(root: Path, env: dict[str, str], *args: str) -> dict[str, object]:
    done = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker", *args], env=env,
                          cwd=root, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", default=str(HERE))
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--worker", nargs=3)
    options = parser.parse_args()
    if options.worker:
        mode, calls, urls = options.worker
        print(json.dumps(_worker(mode, int(calls), json.loads(urls))))
        return
    sys.path.insert(0, str(HERE))
    from tests.support.fake_limited import LimitedOpenAI
    from tests.support.fake_openai import FakeOpenAI
    from tests.support.redis_server import RedisProcess

    root = Path(options.root).resolve()
    server = RedisProcess().start()
    scratch = tempfile.mkdtemp(prefix="bench-learned-")
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "project.settings", "SECRET_KEY": "bench-only",
           "DEBUG": "false", "DATABASE_URL": f"sqlite:///{scratch}/bench.sqlite3", "LOG_LEVEL": "WARNING",
           "REDIS_URL": server.url, "CACHE_KEY_PREFIX": "rslbench-learned", "CALL_LOG_FLUSH_INTERVAL": "0",
           "PYTHONPATH": str(root), "PYTHONDONTWRITEBYTECODE": "1"}
    try:
        with FakeOpenAI() as plain, LimitedOpenAI(rpm=10**6, window=60, announce=True) as announcing:
            urls = json.dumps({"plain": plain.root_url, "announcing": announcing.root_url})
            _run(root, env, "setup", "0", urls)
            _run(root, env, "learn", "0", urls)
            counted = _run(root, env, "count", str(options.calls), urls)
    finally:
        server.stop()
    print(f"Redis round trips per call (and commands run), a fresh worker after another learned the limits "
          f"({options.calls} calls each; checkout {root}):")
    for name in UPSTREAMS:
        row = counted[name]
        print(f"  {name:10} first call (the pool built) {row['first']} round trips; then "
              f"{row['per_call']:6.3f} per call   {row['by_command']}")


if __name__ == "__main__":
    main()
