"""Public face of the distributed locks (they live in resilience.client.locks)."""
from resilience.client.locks import Lock, LockNotAcquired, lock, lock_backend, lock_stats

__all__ = ["Lock", "LockNotAcquired", "lock", "lock_backend", "lock_stats"]
