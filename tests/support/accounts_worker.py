"""A worker process for accounts tests (resilience.client.accounts): the
pool worker's `call`, and a `setup` that also stores each account's first
refresh token (sealed, with the CREDENTIALS_KEYS of the environment).

    python -m tests.support.accounts_worker setup '{"name": ..., "endpoints": [...], "tokens": {...}}'
    python -m tests.support.accounts_worker call NAME /path <seconds> <interval>
"""
from __future__ import annotations

import json
import sys
from typing import Any

from tests.support import pool_worker


def _setup(spec: dict[str, Any]) -> dict[str, Any]:
    from resilience.client.accounts import account_refresh_token_set
    from resilience.models import Endpoint

    tokens = spec.pop("tokens")
    saved = pool_worker._setup(spec)
    for endpoint in Endpoint.objects.filter(name__in=list(tokens)):
        account_refresh_token_set(endpoint=endpoint, refresh_token=tokens[endpoint.name])
    return saved


def main(argv: list[str]) -> None:
    import django

    django.setup()
    action, *args = argv
    if action == "setup":
        print(json.dumps(_setup(json.loads(args[0]))), flush=True)
    else:
        pool_worker.main(argv)


if __name__ == "__main__":
    main(sys.argv[1:])
