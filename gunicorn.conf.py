"""gunicorn settings for `make serve`.

Workers and threads come from WORKERS / THREADS. With several workers,
Prometheus metrics need a shared directory (PROMETHEUS_MULTIPROC_DIR, set by
`make serve`): it is emptied when the server starts, and a dead worker's live
gauges are dropped, as prometheus_client's multiprocess mode requires.
"""
import os
import shutil

workers = int(os.environ.get("WORKERS", "4"))
threads = int(os.environ.get("THREADS", "4"))
# Stream responses (SSE) hold a worker thread for their whole length.
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "120"))
graceful_timeout = 30  # clean shutdown: buffered call logs are written at exit
accesslog = "-"


def _metrics_dir() -> str:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")


def on_starting(server):
    path = _metrics_dir()
    if path:
        shutil.rmtree(path, ignore_errors=True)
        os.makedirs(path, exist_ok=True)


def child_exit(server, worker):
    if _metrics_dir():
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)
