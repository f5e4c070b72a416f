"""A server worker's last step before it takes requests (gunicorn's
`post_worker_init`, gunicorn.conf.py): load what the first requests would
load, then take everything loaded so far out of the garbage collector's way
with `gc.freeze()`.

Why: a full collection walks every tracked object, and a worker that has
imported Django, DRF, the openai SDK and these apps holds hundreds of
thousands of them, nearly all of which live as long as the process (code,
settings, URL patterns, the SDK's types). Measured under 100 generations a
second: a full collection every few seconds per worker, each stopping the
event loop for about 90 ms, which every request in flight then waited out
(the p99 of the steady load). Frozen objects are never examined again; what
requests create later is collected as before.
"""
from __future__ import annotations

import gc


def warm_worker() -> None:
    from django.urls import get_resolver

    get_resolver().url_patterns  # noqa: B018  # imports every view module and what they import
    import openai  # noqa: F401  # the provider imports the SDK on its first call otherwise

    gc.collect()
    gc.freeze()
