"""aigen's routes: the slow-by-design views are declared in a registry, not
marked with attributes stuck onto the view functions (issue 25, item 3)."""
from __future__ import annotations

from django.urls import resolve

from aigen.edge.generate import GenerateView
from resilience.telemetry.slow import slow_expected_is


def test_generation_routes_are_slow_by_design_through_the_registry():
    for path in ("/api/ai/generate", "/v1/chat/completions"):
        view = resolve(path).func
        assert slow_expected_is(view), path
        assert not hasattr(view, "slow_expected"), path
    assert not slow_expected_is(resolve("/api/ai/templates").func)


def test_the_async_generate_view_is_documented_by_its_drf_class():
    assert resolve("/api/ai/generate").func.cls is GenerateView
