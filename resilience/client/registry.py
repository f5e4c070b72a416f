"""The process-wide clients, one per upstream name."""
from __future__ import annotations

import asyncio
import threading

from resilience.client.core import UpstreamClient

_clients: dict[str, UpstreamClient] = {}
_clients_lock = threading.Lock()


def _in_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def upstream_client(name: str) -> UpstreamClient:
    """The process-wide client for `name`. From sync code an unknown name
    raises UnknownUpstream here; on an event loop (no database access there)
    the policy loads, and an unknown name raises, at the first call."""
    client = _clients.get(name)
    if client is None:
        with _clients_lock:
            client = _clients.get(name)
            if client is None:
                client = UpstreamClient(name)
                if not _in_event_loop():
                    client.load()
                _clients[name] = client
    return client


def near_caches_clear() -> None:
    """Empty every client's near cache in this process (after clearing `http`)."""
    for client in list(_clients.values()):
        client.near.clear()


def reset_clients() -> None:
    """Forget every client, closing its sessions (tests; the next call
    rebuilds from the database)."""
    with _clients_lock:
        clients = list(_clients.values())
        _clients.clear()
    for client in clients:
        client.close()
