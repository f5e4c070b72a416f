"""Tests of resilience.cache (mirrors resilience/cache/)."""
