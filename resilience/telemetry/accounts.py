"""Account metrics, at scrape time (issue 27): one query over the OAuth2
accounts' rows, the same answer from every worker; never a token.

- `resilience_account_needs_new_token{upstream, endpoint}`: 1 when the token
  server refused the refresh token (`invalid_grant`): an operator must set a
  new one;
- `resilience_account_expires_in_seconds{upstream, endpoint}`: seconds left
  of the stored access token (negative: expired);
- `resilience_account_refreshes_total{upstream, endpoint}` and
  `resilience_account_refresh_failures{upstream, endpoint}` (consecutive).
Labels are bounded by configuration (endpoint rows), never by traffic.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Iterator

from django.db import DatabaseError
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from resilience.models import Account

logger = logging.getLogger(__name__)


class AccountCollector:
    """See the module docstring."""

    def collect(self) -> Iterator[Metric]:
        labels = ["upstream", "endpoint"]
        needs = GaugeMetricFamily("resilience_account_needs_new_token",
                                  "1: the account's refresh token was refused; set a new one.", labels=labels)
        expires = GaugeMetricFamily("resilience_account_expires_in_seconds",
                                    "Seconds left of the account's access token.", labels=labels)
        refreshes = CounterMetricFamily("resilience_account_refreshes", "Access token refreshes.",
                                        labels=labels)
        failures = GaugeMetricFamily("resilience_account_refresh_failures",
                                     "Consecutive failed refreshes.", labels=labels)
        try:
            rows = list(Account.objects.values_list("endpoint__upstream__name", "endpoint__name",
                                                    "needs_new_token", "expires_at", "refreshes", "failures"))
        except DatabaseError:
            logger.warning("metrics: account states left out (database unavailable)")
            return
        now = time.time()
        for upstream, endpoint, needs_new, expires_at, count, failed in rows:
            key = [upstream, endpoint]
            needs.add_metric(key, 1 if needs_new else 0)
            if expires_at is not None:
                expires.add_metric(key, round(expires_at.timestamp() - now, 1))
            refreshes.add_metric(key, count)
            failures.add_metric(key, failed)
        yield needs
        yield expires
        yield refreshes
        yield failures
