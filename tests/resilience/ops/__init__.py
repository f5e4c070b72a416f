"""Tests of resilience.ops (mirrors resilience/ops/)."""
