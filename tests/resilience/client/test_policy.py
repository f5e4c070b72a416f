"""PolicyRetry and DeadlineTimeout on their own: backoff, Retry-After, the
deadline, and failures no retry can fix."""
from __future__ import annotations

import socket
import time

import pytest
from urllib3.exceptions import MaxRetryError, NewConnectionError

from resilience.client.policy import (
    DeadlineExceeded,
    DeadlineTimeout,
    PolicyRetry,
    Trace,
    current_trace,
    unfixable,
)


def _retry(**kwargs) -> PolicyRetry:
    values = {"total": 3, "backoff_factor": 2.0, "backoff_max": 8.0, "backoff_jitter": 0.0,
              "status_forcelist": {503}, "allowed_methods": {"GET"}, "raise_on_status": False,
              "retry_after_max": 5.0, **kwargs}
    return PolicyRetry(**values)


class _Status:
    def __init__(self, status: int, retry_after: str | None = None) -> None:
        self.status = status
        self.headers = {"Retry-After": retry_after} if retry_after else {}

    def get_redirect_location(self) -> bool:
        return False


def test_backoff_is_factor_times_two_to_the_n_minus_one():
    retry = _retry()
    waits = []
    for _ in range(3):
        retry = retry.increment("GET", "/x", response=_Status(503))
        waits.append(retry.get_backoff_time())
    assert waits == [2.0, 4.0, 8.0]


def test_retry_after_is_honoured_up_to_its_cap():
    retry = _retry().increment("GET", "/x", response=_Status(503, "30"))
    assert retry.wait_for(_Status(503, "30")) == 5.0
    assert retry.wait_for(_Status(503, "1")) == 1.0


def test_a_wait_past_the_deadline_is_not_taken():
    trace = Trace(deadline=time.monotonic() + 1.0)
    token = current_trace.set(trace)
    try:
        retry = _retry().increment("GET", "/x", response=_Status(503))
        with pytest.raises(DeadlineExceeded):
            retry.wait_for()  # 2 s of backoff, 1 s left
        assert trace.history[-1]["status"] == 503 and trace.history[-1]["wait_s"] == 2.0
    finally:
        current_trace.reset(token)


def test_timeouts_never_pass_the_deadline():
    timeout = DeadlineTimeout(3.0, 10.0, time.monotonic() + 0.5)
    assert 0.4 < timeout.connect_timeout <= 0.5 and 0.4 < timeout.read_timeout <= 0.5
    assert timeout.clone().deadline == timeout.deadline


@pytest.mark.parametrize("cause", [socket.gaierror(-2, "Name or service not known"),
                                   ConnectionRefusedError(111, "Connection refused")])
def test_unresolvable_names_and_refusals_end_the_call_at_once(cause):
    error = NewConnectionError(None, "failed")
    error.__cause__ = cause
    assert unfixable(error)
    with pytest.raises(MaxRetryError):
        _retry(total=5).increment("GET", "/x", error=error)


def test_a_reset_is_retried():
    error = NewConnectionError(None, "failed")
    error.__cause__ = ConnectionResetError(104, "reset")
    assert not unfixable(error)
    assert _retry(total=5).increment("GET", "/x", error=error).total == 4


def test_anthropics_529_overloaded_is_a_status_a_policy_may_name_and_its_retry_after_is_honoured(db):
    from resilience.models import Upstream
    from resilience.ops.admin_forms import error_status

    row = Upstream(name="claude", base_url="https://api.anthropic.example/v1", retry_statuses=[529, 503])
    row.full_clean()  # refused before: 529 is no registered HTTP status
    assert error_status("529") == 529
    retry = _retry(status_forcelist=set(), allowed_methods={"POST"})
    assert retry.is_retry("POST", 529, has_retry_after=True)  # asked to wait: like a 503
    assert retry.get_retry_after(_Status(529, "3")) == 3.0
