"""Tests of resilience.jobs (mirrors resilience/jobs/)."""
