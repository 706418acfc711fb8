"""API keys: issued once in plaintext, stored only as SHA-256 hashes, checked without leaking timing.

Keys carry 256 bits of randomness, so a fast hash is the right one (a password hash would only slow every
request). The lookup is by the hash of what the caller presented, never by the key itself: its timing depends
only on that digest, which an attacker cannot steer towards a stored one, so it leaks nothing about stored keys.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable, Mapping

from sluice.config import KeySettings, TierSettings
from sluice.errors import AuthenticationError
from sluice.identity._directory import Directory
from sluice.identity._principal import ANONYMOUS, Principal

KEY_PREFIX = "sk-sluice-"


def generate_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


def presented_key(authorization: str | None, api_key: str | None = None) -> str | None:
    """The key from ``Authorization: Bearer <key>`` (as the OpenAI SDK sends it) or ``api-key: <key>``."""
    if authorization:
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    return api_key.strip() if api_key and api_key.strip() else None


class KeyRing:
    """Maps presented keys to principals: the configured keys, then the keys issued through the admin API
    (``directory``), minus the revoked ones. ``open_access`` lets unknown or missing keys in as anonymous."""

    def __init__(
        self, keys: Iterable[KeySettings], tiers: Mapping[str, TierSettings], *, open_access: bool = False,
        directory: Directory | None = None,
    ) -> None:
        self._by_hash: dict[str, Principal] = {
            k.hash: Principal(
                key_id=k.id,
                user=k.user or k.id,
                tenant=k.tenant,
                tier=k.tier,
                priority=tiers[k.tier].priority,
            )
            for k in keys
        }
        self.open_access = open_access
        self._tiers = dict(tiers)
        self._directory = directory

    def authenticate(self, authorization: str | None, api_key: str | None = None) -> Principal:
        return self.principal_of(presented_key(authorization, api_key))

    def principal_of(self, key: str | None) -> Principal:
        """Who presented ``key`` (None: no key was presented)."""
        if key is not None:
            principal = self._principal_for(hash_key(key))
            if principal is not None:
                return principal
        if self.open_access:
            return ANONYMOUS
        if key is None:
            raise AuthenticationError(
                "You didn't provide an API key. Send it as 'Authorization: Bearer <key>'."
            )
        raise AuthenticationError(f"Incorrect API key provided: {_redact(key)}.")


    def _principal_for(self, key_hash: str) -> Principal | None:
        principal = self._by_hash.get(key_hash)
        directory = self._directory
        if directory is None:
            return principal
        if principal is None:
            issued = directory.issued(key_hash)
            if issued is None or issued.tier not in self._tiers:
                return None
            principal = Principal(key_id=issued.id, user=issued.user, tenant=issued.tenant, tier=issued.tier,
                                  priority=self._tiers[issued.tier].priority)
        return None if directory.is_revoked(principal.key_id) else principal


def _redact(key: str) -> str:
    """Show only enough of a key to recognise it, as OpenAI does (``sk-slu...AbCd``)."""
    return f"{key[:6]}...{key[-4:]}" if len(key) > 14 else "***"
