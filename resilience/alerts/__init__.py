"""Alerts: rules in the database, evaluated from the telemetry rollups (and
the jobs ledger, probe history and shared breaker state) by one scheduled
runner across the cluster; each alert goes pending -> firing -> resolved with
its history kept, and notifies webhooks (HMAC-signed JSON, Slack's incoming
webhook shape) and email once per transition, grouped per rule, with a repeat
interval and silences.

Who may import it: the edges (API views, admin, commands, dashboard) and
resilience.config. `tasks` declares its jobs and their schedules to the jobs
engine. It imports the client only for breaker and endpoint state, and the
telemetry for rollups.
"""
