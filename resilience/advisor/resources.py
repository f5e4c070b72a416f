"""Per-process resources: each worker process publishes a snapshot to the
cache every `RESOURCES_INTERVAL` seconds; the resources view reads them all.

A snapshot (`resources_snapshot()`) holds the process's RSS and CPU time
(psutil), its threads, database connection pool (in use / size, when
configured: PostgreSQL), the Redis pool's
connections in use, and for each upstream client built in this process its
connection pool (in use / size, sync face) and bulkhead (in flight / limit,
queued).

Cost: nothing per request. A daemon thread per process does the publishing;
it is started by the first upstream call of the process (one integer compare
per call afterwards, in a `call_completed` receiver) or by a read of the
view, and again after a fork (the pid changes). Snapshots expire from the
cache after ten intervals, so a dead worker drops out of the view.

With the local-memory cache (no REDIS_URL) each process sees only itself.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
import time
from typing import Any

import psutil
from django.db import connections

from resilience.advisor.conf import advisor_settings
from resilience.cache import default_cache
from resilience.client import registry
from resilience.signals import call_completed

logger = logging.getLogger(__name__)

INDEX_KEY = "resilience:resources:index"
SNAPSHOT_KEY = "resilience:resources:proc:{}"


def process_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _database() -> dict[str, Any]:
    """Each database's connection pool (process-wide) when one is configured:
    connections in use, pool size, its maximum and requests waiting. Without a
    pool, Django's connections are per thread and not visible from here."""
    found: dict[str, Any] = {}
    for alias in connections:
        connection = connections[alias]
        pools = getattr(type(connection), "_connection_pools", None) or {}
        pool = pools.get(alias)
        if pool is None:
            found[alias] = {"vendor": connection.vendor, "pooled": False}
            continue
        stats = pool.get_stats()
        size = stats.get("pool_size", 0)
        found[alias] = {"vendor": connection.vendor, "pooled": True,
                        "in_use": size - stats.get("pool_available", 0), "size": size,
                        "max": pool.max_size, "waiting": stats.get("requests_waiting", 0)}
    return found


def _redis() -> dict[str, Any] | None:
    engine = default_cache().engine
    if engine.redis is None:
        return None
    try:
        pool = engine.redis.client.get_client().connection_pool
    except Exception as err:  # introspection only: never break the view
        return {"error": type(err).__name__}
    in_use = len(getattr(pool, "_in_use_connections", ()))
    available = len(getattr(pool, "_available_connections", ()))
    return {"in_use": in_use, "idle": available, "max": getattr(pool, "max_connections", None),
            "serving": engine.up}


def _upstreams() -> dict[str, Any]:
    found: dict[str, Any] = {}
    # The built policy as it is, read without `client.policy`: that may reload
    # the policy from the database, which this thread must not do every few seconds.
    for name, client in list(registry._clients.items()):
        built = client._live._built
        if built is None:
            continue
        size = built.policy.pool_size
        in_use = 0
        for adapter in built.session.adapters.values():
            for key in list(adapter.poolmanager.pools.keys()):
                pool = adapter.poolmanager.pools.get(key)
                if pool is not None and pool.pool is not None:
                    in_use += max(0, pool.pool.maxsize - pool.pool.qsize())
            break  # http:// and https:// share one adapter
        bulkhead = built.bulkhead
        found[name] = {
            "pool": {"in_use": in_use, "size": size},
            "bulkhead": None if bulkhead is None else {
                "in_flight": bulkhead.in_flight, "limit": bulkhead.limit, "waiting": bulkhead.waiting},
        }
    return found


def resources_snapshot() -> dict[str, Any]:
    """This process's resources now (see the module docstring)."""
    process = psutil.Process()
    with process.oneshot():
        cpu = process.cpu_times()
        memory = process.memory_info()
        threads = process.num_threads()
        created = process.create_time()
    return {
        "process": process_id(), "pid": os.getpid(), "published_at": time.time(),
        "uptime_s": round(time.time() - created, 1),
        "rss_bytes": memory.rss, "cpu_seconds": round(cpu.user + cpu.system, 2),
        "cpu_percent": round(_cpu_percent(process), 1), "threads": threads,
        "database": _database(), "redis": _redis(), "upstreams": _upstreams(),
    }


_cpu_last: dict[int, tuple[float, float]] = {}


def _cpu_percent(process: psutil.Process) -> float:
    """CPU use since this process's previous snapshot (percent of one core)."""
    now = time.monotonic()
    times = process.cpu_times()
    used = times.user + times.system
    pid = os.getpid()
    last = _cpu_last.get(pid)
    _cpu_last[pid] = (now, used)
    if last is None or now <= last[0]:
        return 0.0
    return 100.0 * (used - last[1]) / (now - last[0])


def resources_publish() -> dict[str, Any]:
    """Write this process's snapshot to the cache and list it in the index."""
    snapshot = resources_snapshot()
    interval = float(advisor_settings.RESOURCES_INTERVAL)
    store = default_cache()
    ttl = max(10, int(interval * 10))
    store.set(SNAPSHOT_KEY.format(snapshot["process"]), snapshot, timeout=ttl)
    index = store.get(INDEX_KEY) or {}
    cutoff = time.time() - ttl
    index = {key: seen for key, seen in index.items() if seen >= cutoff}
    index[snapshot["process"]] = snapshot["published_at"]
    store.set(INDEX_KEY, index, timeout=ttl)
    return snapshot


class Publisher:
    """The process's publishing thread (one per pid)."""

    def __init__(self) -> None:
        self.pid: int | None = None
        self._lock = threading.Lock()

    def ensure(self) -> None:
        if self.pid == os.getpid():
            return
        with self._lock:
            if self.pid == os.getpid():
                return
            self.pid = os.getpid()
            threading.Thread(target=self._run, name="resources-publisher", daemon=True).start()

    def _run(self) -> None:
        pid = os.getpid()
        while self.pid == pid:
            try:
                resources_publish()
            except Exception:  # keep publishing: the cache may be down for a while
                logger.debug("resources: publishing failed", exc_info=True)
            time.sleep(max(0.5, float(advisor_settings.RESOURCES_INTERVAL)))


_publisher = Publisher()


def _on_call_completed(sender: Any, **kwargs: Any) -> None:
    if _publisher.pid != os.getpid():
        _publisher.ensure()


call_completed.connect(_on_call_completed, dispatch_uid="resilience.advisor.resources")


def resources_view() -> dict[str, Any]:
    """Every live process's latest snapshot (this one's taken now), and totals."""
    _publisher.ensure()
    own = resources_publish()
    store = default_cache()
    index = store.get(INDEX_KEY) or {}
    keys = [SNAPSHOT_KEY.format(name) for name in index if name != own["process"]]
    found = store.get_many(keys) if keys else {}
    processes = sorted([own, *found.values()], key=lambda s: s["process"])
    totals = {"processes": len(processes), "rss_bytes": sum(s["rss_bytes"] for s in processes),
              "threads": sum(s["threads"] for s in processes),
              "database_connections_in_use": sum(db.get("in_use", 0) for s in processes
                                                 for db in s["database"].values())}
    return {"processes": processes, "totals": totals}
