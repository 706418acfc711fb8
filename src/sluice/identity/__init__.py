"""Identify: who is calling? API keys and JWTs mapped to a ``Principal``."""

from sluice.identity._api_keys import KEY_PREFIX, KeyRing, generate_key, hash_key, presented_key
from sluice.identity._authenticator import Authenticator
from sluice.identity._directory import Directory, IssuedKey, MemoryDirectory, RedisDirectory, Snapshot
from sluice.identity._jwks import PinnedKey, load_jwks
from sluice.identity._jwt import JwtVerifier, looks_like_jwt
from sluice.identity._keys_command import add_keys_parser
from sluice.identity._principal import ANONYMOUS, Principal

__all__ = [
    "ANONYMOUS",
    "KEY_PREFIX",
    "Authenticator",
    "Directory",
    "IssuedKey",
    "JwtVerifier",
    "KeyRing",
    "MemoryDirectory",
    "PinnedKey",
    "Principal",
    "RedisDirectory",
    "Snapshot",
    "add_keys_parser",
    "generate_key",
    "hash_key",
    "load_jwks",
    "looks_like_jwt",
    "presented_key",
]
