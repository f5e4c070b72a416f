# API tokens stored as SHA-256 digests (aigen.tokens). Every DRF authtoken key
# becomes an ApiToken with the key's digest and prefix, then the clear keys are
# deleted: existing clients keep their tokens, the table keeps no secret.
# Not reversible into clear keys (nothing here knows them any more): going
# back leaves DRF's table empty, and every token must be issued again.

import hashlib

import django.db.models.deletion
import django.utils.timezone
from django.conf import settings
from django.db import migrations, models

PREFIX_LENGTH = 8  # aigen.tokens.PREFIX_LENGTH, frozen here


def hash_existing_tokens(apps, schema_editor):
    Token = apps.get_model("authtoken", "Token")
    ApiToken = apps.get_model("aigen", "ApiToken")
    ApiToken.objects.bulk_create([
        ApiToken(digest=hashlib.sha256(token.key.encode()).hexdigest(), prefix=token.key[:PREFIX_LENGTH],
                 user_id=token.user_id, created_at=token.created)
        for token in Token.objects.all().iterator()
    ], batch_size=500)
    Token.objects.all().delete()


class Migration(migrations.Migration):

    dependencies = [
        ('aigen', '0001_initial'),
        ('authtoken', '0004_alter_tokenproxy_options'),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.CreateModel(
            name='ApiToken',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('digest', models.CharField(editable=False, max_length=64, unique=True)),
                ('prefix', models.CharField(editable=False, max_length=12)),
                ('created_at', models.DateTimeField(default=django.utils.timezone.now, editable=False)),
                ('user', models.OneToOneField(on_delete=django.db.models.deletion.CASCADE, related_name='api_token', to=settings.AUTH_USER_MODEL)),
            ],
            options={
                'verbose_name': 'API token',
            },
        ),
        migrations.RunPython(hash_existing_tokens, migrations.RunPython.noop),
    ]
