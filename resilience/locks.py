"""Public face of the distributed locks (they live in resilience.jobs.locks)."""
from resilience.jobs.locks import Lock, LockNotAcquired, lock, lock_backend, lock_stats

__all__ = ["Lock", "LockNotAcquired", "lock", "lock_backend", "lock_stats"]
