"""Moved to resilience.telemetry.metrics. This name stays only for
resilience.middleware (`metrics.request_observe`) until it imports
`resilience.telemetry`; new code imports from there."""
from resilience.telemetry.metrics import metrics_view, request_observe

__all__ = ["metrics_view", "request_observe"]
