"""The OAuth2 accounts' alert metrics (an account needs a new refresh token;
its refresh is failing) and their two default rules, created once (the
admin owns them after); an operator gets them without set-up."""

from django.db import migrations, models

WEEK = 7 * 24 * 3600
DEFAULT_RULES = [
    {"name": "account-needs-new-token", "description": "An OAuth2 account's refresh token was refused "
     "(invalid_grant): set a new one", "metric": "account_needs_new_token", "op": ">", "threshold": 0.0,
     "severity": "critical", "for_seconds": 0, "repeat_interval": WEEK},
    {"name": "account-refresh-failing", "description": "An OAuth2 account's token refresh fails "
     "(token server down or refusing)", "metric": "account_refresh_failing", "op": ">", "threshold": 0.0,
     "severity": "warning", "for_seconds": 0, "repeat_interval": WEEK},
]


def default_rules_create(apps, schema_editor):
    AlertRule = apps.get_model("resilience", "AlertRule")
    alias = schema_editor.connection.alias
    for rule in DEFAULT_RULES:
        AlertRule.objects.using(alias).get_or_create(name=rule["name"], defaults=rule)


class Migration(migrations.Migration):

    dependencies = [
        ('resilience', '0014_endpoint_limits'),
    ]

    operations = [
        migrations.AlterField(
            model_name='alertrule',
            name='metric',
            field=models.CharField(choices=[('success_rate', 'success rate (%)'), ('p95_latency_ms', 'p95 latency (ms)'), ('breakers_open', 'breakers open'), ('endpoints_out', 'endpoints out of rotation'), ('all_endpoints_out', 'every endpoint out (1 or 0)'), ('cache_hit_rate', 'cache hit rate (%)'), ('queue_depth', 'jobs waiting in a queue'), ('queue_oldest_age', "oldest waiting job's age (s)"), ('dead_letters', 'dead letters in the window'), ('probe_failures', 'consecutive failed health probes'), ('account_needs_new_token', 'an account needs a new refresh token (1 or 0)'), ('account_refresh_failing', "an account's token refresh failing (1 or 0)")], max_length=30),
        ),
        migrations.AlterField(
            model_name='historicalalertrule',
            name='metric',
            field=models.CharField(choices=[('success_rate', 'success rate (%)'), ('p95_latency_ms', 'p95 latency (ms)'), ('breakers_open', 'breakers open'), ('endpoints_out', 'endpoints out of rotation'), ('all_endpoints_out', 'every endpoint out (1 or 0)'), ('cache_hit_rate', 'cache hit rate (%)'), ('queue_depth', 'jobs waiting in a queue'), ('queue_oldest_age', "oldest waiting job's age (s)"), ('dead_letters', 'dead letters in the window'), ('probe_failures', 'consecutive failed health probes'), ('account_needs_new_token', 'an account needs a new refresh token (1 or 0)'), ('account_refresh_failing', "an account's token refresh failing (1 or 0)")], max_length=30),
        ),
        migrations.RunPython(default_rules_create, migrations.RunPython.noop),
    ]
