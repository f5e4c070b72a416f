"""A server worker's last step before it takes requests (gunicorn's
`post_worker_init`, gunicorn.conf.py): load what the first requests would
load, then take everything loaded so far out of the garbage collector's way
with `gc.freeze()`, and collect the young generation less often.

Why freeze: a full collection walks every tracked object, and a worker that
has imported Django, DRF, the openai SDK and these apps holds hundreds of
thousands of them, nearly all of which live as long as the process (code,
settings, URL patterns, the SDK's types). Measured under 100 generations a
second: a full collection every few seconds per worker, each stopping the
event loop for about 90 ms, which every request in flight then waited out
(the p99 of the steady load). Frozen objects are never examined again; what
requests create later is collected as before.

Why a young generation of `GEN0_THRESHOLD`: a call leaves no cyclic garbage
(measured: none in 200 calls with the collector saving everything it
found; served too, since the handler stopped re-raising uvicorn's
after-answer disconnect in its own frame, project/asgi_handler.py `_serve`,
which had left about 60 objects a request in a cycle), so what makes the
collector run is objects that outlive their call for a moment (buffered
call-log and usage rows until their writer's next flush, pooled
connections, cached entries) and are freed by reference counting soon
after. With Python's default of 700, 32 callers through /v1
triggered a collection every 12 calls, each walking those survivors and the
calls in flight: 0.05-0.08 ms of a call's CPU (5-6%), with pauses up to 9 ms.
At 10,000 the collector ran less than once in 7,000 calls and the call cost
0.07 ms less (`python -m bench.bench_door --gc`). Garbage in cycles, which only
the collector frees, waits longer before it is freed; there is none per call.
"""
from __future__ import annotations

import gc

#: Allocations (net of frees) between young-generation collections in a server worker.
GEN0_THRESHOLD = 10_000


def warm_worker() -> None:
    from django.urls import get_resolver

    get_resolver().url_patterns  # noqa: B018  # imports every view module and what they import
    import openai  # noqa: F401  # the provider imports the SDK on its first call otherwise

    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GEN0_THRESHOLD, older, oldest)
