"""gunicorn settings for `make serve`: gunicorn manages the processes,
uvicorn workers (uvloop, httptools) serve ASGI.

Why ASGI: the AI endpoints spend seconds waiting on a provider, and a stream
lasts as long as the answer. An async view holds a coroutine, not an OS
thread, so one worker carries hundreds of generations and streams at once
(measured: `make loadtest`, README). Sync views (the admin, the operations
API) run in a thread per request, as Django does under ASGI.

Workers come from WORKERS (default: one per CPU core; each is one event
loop). With several workers, Prometheus metrics need a shared directory
(PROMETHEUS_MULTIPROC_DIR, set by `make serve`): it is emptied when the
server starts, and a dead worker's live gauges are dropped, as
prometheus_client's multiprocess mode requires.
"""
import os
import shutil
import subprocess
import sys

workers = int(os.environ.get("WORKERS", str(os.cpu_count() or 1)))
worker_class = "uvicorn_worker.UvicornWorker"
# Connections waiting to be accepted: a burst of thousands of clients queues
# here instead of being refused.
backlog = int(os.environ.get("BACKLOG", "4096"))
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "120"))
graceful_timeout = 30  # clean shutdown: in-flight requests finish, buffered call logs are written
keepalive = 75
# Request bodies: uvicorn has no size limit of its own, and gunicorn's
# limit_request_* settings do not reach uvicorn workers; the limit is enforced
# by the application before it reads a byte (project.door: MAX_REQUEST_BYTES,
# 413 on a declared or counted excess, body-free health and metrics routes).
accesslog = "-" if os.environ.get("ACCESS_LOG", "false").lower() in ("1", "true", "yes") else None
# X-Forwarded-For / -Proto are believed only from these proxies (TRUSTED_PROXIES,
# as Django's RESILIENCE["TRUSTED_PROXIES"]); by default from no one. uvicorn's
# own default trusts any loopback peer, so a client on the same host could pick
# a fresh address per request (the auth-failure throttle counts by address).
forwarded_allow_ips = os.environ.get("TRUSTED_PROXIES", "")


def _metrics_dir() -> str:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")


def on_starting(server):
    # The metrics folder first: every Django process, the check below included,
    # opens files in it at import (a missing folder was a traceback).
    path = _metrics_dir()
    if path:
        shutil.rmtree(path, ignore_errors=True)
        os.makedirs(path, exist_ok=True)
    # Refuse to start, in one line and before any worker boots, when serving is
    # unsafe (no SECRET_KEY with DEBUG off, failed system checks). In a process
    # of its own: the master stays free of Django, as the workers expect.
    checked = subprocess.run([sys.executable, "-m", "project.startup"], check=False,
                             cwd=os.path.dirname(os.path.abspath(__file__)))
    if checked.returncode:
        raise SystemExit(checked.returncode)


def child_exit(server, worker):
    if _metrics_dir():
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)


def post_worker_init(worker):
    """A worker's graceful stop must end in a normal exit. uvicorn finishes
    in-flight requests on SIGTERM, then raises the SIGTERM again for the
    process's previous handler, which gunicorn set to the default action: the
    process was killed before `atexit` ran, and every call-log row, rollup
    count and generation record buffered since the last flush was lost
    (found by tests/acceptance/test_shutdown.py: 200 of 200). Exiting
    normally runs the writers' exit flush (resilience/telemetry/buffered.py)."""
    import signal
    import sys

    def _exit(signum, frame):
        sys.exit(0)

    signal.signal(signal.SIGTERM, _exit)

    from project.warm import warm_worker

    warm_worker()
