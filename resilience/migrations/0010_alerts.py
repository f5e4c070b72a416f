"""Alert rules, alerts, their history and silences (resilience.alerts), and
the seeds' five rules as defaults (created once; the admin owns them after)."""

import django.core.validators
import django.db.models.deletion
import simple_history.models
from django.conf import settings
from django.db import migrations, models


DEFAULT_RULES = [
    {"name": "success-rate-warning", "description": "Success rate under 90% for a minute",
     "metric": "success_rate", "op": "<", "threshold": 90.0, "severity": "warning"},
    {"name": "success-rate-critical", "description": "Success rate under 80% for a minute",
     "metric": "success_rate", "op": "<", "threshold": 80.0, "severity": "critical"},
    {"name": "latency-p95-slow", "description": "p95 latency over 5 s for two minutes",
     "metric": "p95_latency_ms", "op": ">", "threshold": 5000.0, "severity": "warning", "for_seconds": 120},
    {"name": "breaker-open", "description": "A circuit breaker opened",
     "metric": "breakers_open", "op": ">", "threshold": 0.0, "severity": "warning", "for_seconds": 0},
    {"name": "all-endpoints-down", "description": "Every endpoint of an upstream is out of rotation",
     "metric": "all_endpoints_out", "op": ">", "threshold": 0.0, "severity": "critical", "for_seconds": 0},
]


def default_rules_create(apps, schema_editor):
    AlertRule = apps.get_model("resilience", "AlertRule")
    alias = schema_editor.connection.alias
    for rule in DEFAULT_RULES:
        AlertRule.objects.using(alias).get_or_create(name=rule["name"], defaults=rule)


class Migration(migrations.Migration):

    dependencies = [
        ('resilience', '0009_retry_fallbacks'),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.CreateModel(
            name='Alert',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('subject', models.CharField(help_text='The upstream, upstream/endpoint or queue.', max_length=130)),
                ('state', models.CharField(choices=[('pending', 'pending'), ('firing', 'firing'), ('resolved', 'resolved')], default='resolved', max_length=10)),
                ('value', models.FloatField(blank=True, help_text='The last value measured.', null=True)),
                ('active_since', models.DateTimeField(blank=True, help_text='When the condition began to hold.', null=True)),
                ('fired_at', models.DateTimeField(blank=True, null=True)),
                ('resolved_at', models.DateTimeField(blank=True, null=True)),
                ('last_notified_at', models.DateTimeField(blank=True, null=True)),
                ('version', models.PositiveIntegerField(default=0, help_text='Compare-and-set counter of transitions.')),
                ('updated_at', models.DateTimeField(auto_now=True, db_index=True)),
            ],
            options={
                'ordering': ['rule__name', 'subject'],
            },
        ),
        migrations.CreateModel(
            name='AlertRule',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('name', models.SlugField(help_text='Shown in notifications and metrics.', max_length=64, unique=True)),
                ('description', models.CharField(blank=True, max_length=200)),
                ('enabled', models.BooleanField(default=True)),
                ('metric', models.CharField(choices=[('success_rate', 'success rate (%)'), ('p95_latency_ms', 'p95 latency (ms)'), ('breakers_open', 'breakers open'), ('endpoints_out', 'endpoints out of rotation'), ('all_endpoints_out', 'every endpoint out (1 or 0)'), ('cache_hit_rate', 'cache hit rate (%)'), ('queue_depth', 'jobs waiting in a queue'), ('queue_oldest_age', "oldest waiting job's age (s)"), ('dead_letters', 'dead letters in the window'), ('probe_failures', 'consecutive failed health probes')], max_length=30)),
                ('scope', models.CharField(choices=[('any', 'any (every upstream, or every queue)'), ('upstream', 'one upstream'), ('endpoint', 'one endpoint (upstream/endpoint)'), ('queue', 'one queue')], default='any', max_length=10)),
                ('target', models.CharField(blank=True, help_text='The upstream\'s name, "upstream/endpoint", or the queue (high, default, low); empty for any.', max_length=130)),
                ('op', models.CharField(choices=[('<', 'below'), ('>', 'above')], default='>', max_length=1)),
                ('threshold', models.FloatField()),
                ('window', models.PositiveIntegerField(default=300, help_text='Seconds of rollups the value is computed over (whole minutes; success rate, latency, cache hit rate, dead letters).', validators=[django.core.validators.MinValueValidator(60), django.core.validators.MaxValueValidator(86400)])),
                ('for_seconds', models.PositiveIntegerField(default=60, help_text='Seconds the condition must hold before the alert fires (0: at once).', validators=[django.core.validators.MaxValueValidator(86400)])),
                ('min_calls', models.PositiveIntegerField(default=10, help_text='Rates and latency are only judged with at least this many calls in the window.')),
                ('severity', models.CharField(choices=[('info', 'info'), ('warning', 'warning'), ('critical', 'critical')], default='warning', max_length=10)),
                ('repeat_interval', models.PositiveIntegerField(default=14400, help_text='Seconds before a still-firing alert is notified again.', validators=[django.core.validators.MinValueValidator(60)])),
                ('created_at', models.DateTimeField(auto_now_add=True)),
                ('updated_at', models.DateTimeField(auto_now=True)),
            ],
            options={
                'ordering': ['name'],
            },
        ),
        migrations.CreateModel(
            name='AlertEvent',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('created_at', models.DateTimeField(db_index=True)),
                ('rule', models.CharField(max_length=64)),
                ('subject', models.CharField(max_length=130)),
                ('severity', models.CharField(max_length=10)),
                ('from_state', models.CharField(max_length=10)),
                ('to_state', models.CharField(help_text='pending, firing, resolved, or repeat (a still-firing reminder).', max_length=10)),
                ('value', models.FloatField(blank=True, null=True)),
                ('notified', models.CharField(choices=[('none', 'not notified (pending)'), ('sent', 'sent'), ('silenced', 'silenced'), ('failed', 'failed'), ('no_receiver', 'no receiver configured')], default='none', max_length=12)),
                ('alert', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='events', to='resilience.alert')),
            ],
            options={
                'ordering': ['-created_at', '-id'],
            },
        ),
        migrations.AddField(
            model_name='alert',
            name='rule',
            field=models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='alerts', to='resilience.alertrule'),
        ),
        migrations.CreateModel(
            name='HistoricalAlertRule',
            fields=[
                ('id', models.BigIntegerField(auto_created=True, blank=True, db_index=True, verbose_name='ID')),
                ('name', models.SlugField(help_text='Shown in notifications and metrics.', max_length=64)),
                ('description', models.CharField(blank=True, max_length=200)),
                ('enabled', models.BooleanField(default=True)),
                ('metric', models.CharField(choices=[('success_rate', 'success rate (%)'), ('p95_latency_ms', 'p95 latency (ms)'), ('breakers_open', 'breakers open'), ('endpoints_out', 'endpoints out of rotation'), ('all_endpoints_out', 'every endpoint out (1 or 0)'), ('cache_hit_rate', 'cache hit rate (%)'), ('queue_depth', 'jobs waiting in a queue'), ('queue_oldest_age', "oldest waiting job's age (s)"), ('dead_letters', 'dead letters in the window'), ('probe_failures', 'consecutive failed health probes')], max_length=30)),
                ('scope', models.CharField(choices=[('any', 'any (every upstream, or every queue)'), ('upstream', 'one upstream'), ('endpoint', 'one endpoint (upstream/endpoint)'), ('queue', 'one queue')], default='any', max_length=10)),
                ('target', models.CharField(blank=True, help_text='The upstream\'s name, "upstream/endpoint", or the queue (high, default, low); empty for any.', max_length=130)),
                ('op', models.CharField(choices=[('<', 'below'), ('>', 'above')], default='>', max_length=1)),
                ('threshold', models.FloatField()),
                ('window', models.PositiveIntegerField(default=300, help_text='Seconds of rollups the value is computed over (whole minutes; success rate, latency, cache hit rate, dead letters).', validators=[django.core.validators.MinValueValidator(60), django.core.validators.MaxValueValidator(86400)])),
                ('for_seconds', models.PositiveIntegerField(default=60, help_text='Seconds the condition must hold before the alert fires (0: at once).', validators=[django.core.validators.MaxValueValidator(86400)])),
                ('min_calls', models.PositiveIntegerField(default=10, help_text='Rates and latency are only judged with at least this many calls in the window.')),
                ('severity', models.CharField(choices=[('info', 'info'), ('warning', 'warning'), ('critical', 'critical')], default='warning', max_length=10)),
                ('repeat_interval', models.PositiveIntegerField(default=14400, help_text='Seconds before a still-firing alert is notified again.', validators=[django.core.validators.MinValueValidator(60)])),
                ('created_at', models.DateTimeField(blank=True, editable=False)),
                ('updated_at', models.DateTimeField(blank=True, editable=False)),
                ('history_id', models.AutoField(primary_key=True, serialize=False)),
                ('history_date', models.DateTimeField(db_index=True)),
                ('history_change_reason', models.CharField(max_length=100, null=True)),
                ('history_type', models.CharField(choices=[('+', 'Created'), ('~', 'Changed'), ('-', 'Deleted')], max_length=1)),
                ('history_user', models.ForeignKey(null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='+', to=settings.AUTH_USER_MODEL)),
            ],
            options={
                'verbose_name': 'historical alert rule',
                'verbose_name_plural': 'historical alert rules',
                'ordering': ('-history_date', '-history_id'),
                'get_latest_by': ('history_date', 'history_id'),
            },
            bases=(simple_history.models.HistoricalChanges, models.Model),
        ),
        migrations.CreateModel(
            name='Silence',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('subject', models.CharField(blank=True, help_text='Empty: every subject.', max_length=130)),
                ('starts_at', models.DateTimeField()),
                ('ends_at', models.DateTimeField()),
                ('comment', models.CharField(blank=True, max_length=200)),
                ('created_at', models.DateTimeField(auto_now_add=True)),
                ('created_by', models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='+', to=settings.AUTH_USER_MODEL)),
                ('rule', models.ForeignKey(blank=True, help_text='Empty: every rule.', null=True, on_delete=django.db.models.deletion.CASCADE, related_name='silences', to='resilience.alertrule')),
            ],
            options={
                'ordering': ['-ends_at'],
            },
        ),
        migrations.AddIndex(
            model_name='alert',
            index=models.Index(fields=['state'], name='resilience_alert_state'),
        ),
        migrations.AddConstraint(
            model_name='alert',
            constraint=models.UniqueConstraint(fields=('rule', 'subject'), name='resilience_alert_subject'),
        ),
        migrations.AddIndex(
            model_name='silence',
            index=models.Index(fields=['ends_at'], name='resilience_silence_ends'),
        ),
        migrations.RunPython(default_rules_create, migrations.RunPython.noop),
    ]
