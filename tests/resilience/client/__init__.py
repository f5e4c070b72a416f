"""Tests of resilience.client (mirrors resilience/client/)."""
