"""A server worker's warm-up (project.warm, run by gunicorn.conf.py's
post_worker_init): the first requests' imports are done, and what is loaded
is frozen out of the garbage collector's full collections, and the young
generation is collected less often."""
from __future__ import annotations

import gc
import sys

from project.warm import GEN0_THRESHOLD, warm_worker


def test_warm_worker_loads_the_views_and_freezes_what_is_loaded():
    threshold = gc.get_threshold()
    try:
        warm_worker()
        assert {"aigen.edge.openai", "aigen.edge.generate", "openai"} <= set(sys.modules)
        frozen = gc.get_freeze_count()
        assert frozen > 50_000  # Django, DRF, the SDK and the apps: hundreds of thousands here
        # What a full collection walks is what was created since, not what was loaded.
        assert len(gc.get_objects()) < frozen / 10
        # The young generation is collected less often; the older ones as before.
        assert gc.get_threshold() == (GEN0_THRESHOLD, *threshold[1:])
        assert threshold[0] < GEN0_THRESHOLD
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)
