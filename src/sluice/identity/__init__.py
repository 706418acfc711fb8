"""Identify: who is calling? API keys (and, later, JWT) mapped to a ``Principal``."""

from sluice.identity._api_keys import KEY_PREFIX, KeyRing, generate_key, hash_key, presented_key
from sluice.identity._principal import ANONYMOUS, Principal

__all__ = ["ANONYMOUS", "KEY_PREFIX", "KeyRing", "Principal", "generate_key", "hash_key", "presented_key"]
