"""Signals other parts (metrics, dashboards) subscribe to.

- `call_completed`: after every logical upstream call, with the call-log row's
  fields as keyword arguments.
- `breaker_state_changed`: `upstream`, `old`, `new`, sent once per change by
  the process that made it.
"""
from django.dispatch import Signal

call_completed = Signal()
breaker_state_changed = Signal()
