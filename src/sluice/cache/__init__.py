"""The response cache of repeated deterministic requests."""

from sluice.cache._cache import CacheStore, MemoryCache, RedisCache, cache_key, open_cache

__all__ = ["CacheStore", "MemoryCache", "RedisCache", "cache_key", "open_cache"]
