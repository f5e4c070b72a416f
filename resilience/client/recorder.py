"""The record step of the resilient client: a finished call's `Answer` becomes one call record.

`answer_record` hands the record on at once, or, for a streamed answer, when the caller closes it
(with the latency and time of its headers, and the stream's own verdict: the failure its reader saw,
the counts it kept). No I/O of its own: `call_record_emit` (resilience.client.record) queues the
call-log row and sends `call_completed`. Used by resilience.client.core only.
"""
from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

from resilience.client.context import current_caller, current_request_id
from resilience.client.live import Built
from resilience.client.record import CallRecord, call_record_emit
from resilience.client.steps import Answer, Plan, outcome_of


def answer_record(answer: Answer, *, name: str, built: Built, plan: Plan, started: float, stream: bool,
                  sender: Any) -> None:
    """The call's record now, or for a streamed answer when it is closed:
    with the time and latency of its headers, and the stream's verdict."""
    response = answer.response
    if not stream or response is None or answer.error is not None or response.meta.from_cache \
            or response.status_code >= 400:
        _emit(answer, name=name, built=built, plan=plan, started=started, sender=sender)
        return
    latency, created = time.perf_counter() - started, time.time()

    def closed() -> None:
        result = answer.result
        failure = response.stream_failure
        if failure is not None:
            result = replace(result, outcome=outcome_of(failure), error=failure.message)
        if response.stream_counts:
            result = replace(result, stream=tuple(sorted(response.stream_counts.items())))
        _emit(replace(answer, result=result), name=name, built=built, plan=plan, started=started,
              sender=sender, latency=latency, created=created)

    response.when_closed(closed)


def _emit(answer: Answer, *, name: str, built: Built, plan: Plan, started: float, sender: Any,
          latency: float | None = None, created: float | None = None) -> None:
    if latency is None:
        latency = time.perf_counter() - started
    record = CallRecord(
        upstream=name, method=plan.method, spec=plan.spec, raw_path=plan.path,
        secret_names=built.credentials.secret_names, result=answer.result,
        latency_ms=round(latency * 1000, 3), created=time.time() if created is None else created,
        request_id=current_request_id.get() or "", sample_rate=built.policy.log_sample_rate,
        endpoint=answer.result.endpoint, caller=current_caller.get())
    call_record_emit(record, sender=sender)
