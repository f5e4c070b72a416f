"""Moved to resilience.telemetry.calllog. This name stays only for
resilience.client until its rewrite imports `resilience.telemetry`; new code
imports from there."""
from resilience.telemetry.calllog import call_log_discard, call_log_flush, call_log_record

__all__ = ["call_log_discard", "call_log_flush", "call_log_record"]
