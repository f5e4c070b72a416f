"""Configuration as code: every upstream, its endpoints and every alert rule
as one YAML file an operator keeps in version control, reviews and applies
(`manage.py config_export`, `manage.py config_apply FILE [--dry-run]`,
`CONFIG_FILE` at start). Services in resilience.config.files; the edges
(commands) stay thin.

Who may import it: the edges (commands, start-up). It stands on the
advice-and-work floor beside alerts, whose rules it writes.
"""
