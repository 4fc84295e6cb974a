"""The `http.warm` task kind: cache-warming page fetches, polite per domain across the fleet."""

from jobstream.services.worker.warm._cache import CacheStatus, cache_status
from jobstream.services.worker.warm._handler import WarmHandler
from jobstream.services.worker.warm._politeness import domain_key, retry_after_s

__all__ = ["CacheStatus", "WarmHandler", "cache_status", "domain_key", "retry_after_s"]
