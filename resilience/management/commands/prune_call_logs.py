"""`manage.py prune_call_logs`: the old name of `prune_telemetry` (kept so
existing schedules keep working; it now prunes rollups too)."""
from resilience.management.commands.prune_telemetry import Command as PruneTelemetry


class Command(PruneTelemetry):
    help = "Same as prune_telemetry (its old name). " + PruneTelemetry.help
