"""JWT bearer tokens: verified against configured keys, each pinned to one algorithm, then mapped to a Principal.

The key is chosen by the token header's ``kid`` (or is the only key); the token's own ``alg`` is never trusted,
only compared with the key's: ``none``, and HS256 against an RSA key (the public key used as an HMAC secret),
are refused before any signature check. PyJWT checks the signature, ``iss`` and ``aud``; the times (``exp``,
``nbf``, ``iat``) are checked here against the injected clock, with ``leeway_s``. Every failure is an
``AuthenticationError`` with a short reason and never the token.

Each token holder is its own caller: the key id is ``jwt:<subject>`` (the ``sub`` claim, or ``claims.subject``), so
the "per key" limits count per subject, whichever signing key issued the token; a token without it is refused.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

import jwt

from sluice.clock import Clock
from sluice.config import JwtSettings, TierSettings
from sluice.errors import AuthenticationError, ConfigError
from sluice.identity._jwks import PinnedKey, hs256_key, load_jwks
from sluice.identity._principal import Principal

# Three base64url parts, the first a JSON object (`{"` encodes as `eyJ`); an unsigned token has an empty third.
_JWT_SHAPE = re.compile(r"^eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$")

# PyJWT's verdicts, in the words of our 401s (most specific first: these are subclasses of one another).
_REASONS: tuple[tuple[type[Exception], str], ...] = (
    (jwt.InvalidSignatureError, "bad signature"),
    (jwt.InvalidAudienceError, "wrong audience"),
    (jwt.InvalidIssuerError, "wrong issuer"),
    (jwt.InvalidAlgorithmError, "algorithm not allowed for this key"),
    (jwt.DecodeError, "malformed token"),
)


def looks_like_jwt(token: str) -> bool:
    return _JWT_SHAPE.match(token) is not None


class JwtVerifier:
    def __init__(self, keys: Iterable[PinnedKey], settings: JwtSettings, tiers: Mapping[str, TierSettings],
                 clock: Clock) -> None:
        self._keys = list(keys)
        kids = [k.kid for k in self._keys]
        if len(self._keys) > 1 and None in kids:
            raise ConfigError("auth.jwt: with several keys, every JWK needs a 'kid'")
        if len(set(kids)) != len(kids):
            raise ConfigError("auth.jwt: two keys share a kid")
        self._by_kid = {k.kid: k for k in self._keys}
        self._settings = settings
        self._priorities = {name: tier.priority for name, tier in tiers.items()}
        self._clock = clock

    @classmethod
    def from_settings(cls, settings: JwtSettings, tiers: Mapping[str, TierSettings], clock: Clock) -> JwtVerifier:
        """Reads ``settings.jwks_file`` (now, once); a missing or bad file is a ConfigError."""
        keys = [hs256_key(s.kid, s.secret) for s in settings.hs256_secrets]
        if settings.jwks_file is not None:
            keys += load_jwks(settings.jwks_file)
        return cls(keys, settings, tiers, clock)

    def verify(self, token: str) -> Principal:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise _refused("malformed token") from exc
        key = self._key_for(header)
        if header.get("alg") != key.algorithm:
            raise _refused("algorithm not allowed for this key")
        claims = self._decode(token, key)
        self._check_times(claims)
        return self._principal(claims)

    def _key_for(self, header: Mapping[str, Any]) -> PinnedKey:
        kid = header.get("kid")
        if kid is None and len(self._keys) == 1:
            return self._keys[0]
        key = self._by_kid.get(kid) if isinstance(kid, str) else None
        if key is None:
            raise _refused("unknown key" if kid is not None else "no kid in the token header")
        return key

    def _decode(self, token: str, key: PinnedKey) -> dict[str, Any]:
        s = self._settings
        try:
            return jwt.decode(
                token, key.key, algorithms=[key.algorithm], audience=s.audience, issuer=s.issuer,
                options={"verify_exp": False, "verify_nbf": False, "verify_iat": False, "require": ["exp"]},
            )
        except jwt.MissingRequiredClaimError as exc:
            raise _refused(f"missing claim {exc.claim!r}") from exc
        except jwt.PyJWTError as exc:
            reason = next((why for kind, why in _REASONS if isinstance(exc, kind)), "invalid token")
            raise _refused(reason) from exc

    def _check_times(self, claims: Mapping[str, Any]) -> None:
        now, leeway = self._clock.wall(), self._settings.leeway_s
        if _time(claims, "exp") <= now - leeway:
            raise _refused("expired")
        if "nbf" in claims and _time(claims, "nbf") > now + leeway:
            raise _refused("not yet valid")
        if "iat" in claims and _time(claims, "iat") > now + leeway:
            raise _refused("issued in the future")

    def _principal(self, claims: Mapping[str, Any]) -> Principal:
        names, s = self._settings.claims, self._settings
        subject = _text(claims, names.subject)
        if subject is None:  # refused, never merged into a bucket shared with other token holders
            raise _refused(f"missing claim {names.subject!r} (the caller's identity)")
        user = _text(claims, names.user)
        if user is None:
            raise _refused(f"missing claim {names.user!r}")
        tenant = (_text(claims, names.tenant) if names.tenant else None) or s.default_tenant
        tier = (_text(claims, names.tier) if names.tier else None) or s.default_tier
        if tier not in self._priorities:
            raise _refused("the token's tier is not configured")
        return Principal(key_id=f"jwt:{subject}", user=user, tenant=tenant, tier=tier,
                         priority=self._priorities[tier])


def _time(claims: Mapping[str, Any], name: str) -> float:
    value = claims.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _refused(f"claim {name!r} is not a number")
    return float(value)


def _text(claims: Mapping[str, Any], name: str) -> str | None:
    """A claim as text: strings and integers are accepted; absent is None; anything else is refused."""
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, str | int) or value == "":
        raise _refused(f"claim {name!r} is not a string")
    return str(value)


def _refused(reason: str) -> AuthenticationError:
    return AuthenticationError(f"Invalid token: {reason}.")
