"""Tests of resilience.telemetry (mirrors resilience/telemetry/)."""
