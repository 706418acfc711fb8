"""Verification keys, each pinned to the one algorithm it may verify: HS256 secrets and a JWKS file of public keys.

A JWK's algorithm is its ``alg``, or, without one, follows from its key type: RSA → RS256, EC P-256 → ES256.
The file may hold only public signing keys: a private key (``d``) or a symmetric one (``oct``) is refused,
and keys marked for encryption (``use: enc``) are skipped.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt

from sluice.errors import ConfigError

# The asymmetric algorithms a JWK may be pinned to, with the key type (and curve) each needs.
_PUBLIC_KEY_ALGORITHMS: dict[str, tuple[str, str | None]] = {
    "RS256": ("RSA", None), "RS384": ("RSA", None), "RS512": ("RSA", None),
    "PS256": ("RSA", None), "PS384": ("RSA", None), "PS512": ("RSA", None),
    "ES256": ("EC", "P-256"), "ES384": ("EC", "P-384"), "ES512": ("EC", "P-521"),
}


@dataclass(frozen=True, slots=True)
class PinnedKey:
    """A verification key and the only algorithm it verifies. ``kid`` is None only for a lone keyless JWK."""

    kid: str | None
    algorithm: str
    key: Any = field(repr=False)  # HMAC secret bytes, or a `cryptography` public key


def hs256_key(kid: str, secret: str) -> PinnedKey:
    return PinnedKey(kid, "HS256", secret.encode())


def load_jwks(path: str | Path) -> list[PinnedKey]:
    """The signing keys of the JWKS file at ``path``. Raises ConfigError naming the file and the key."""
    path = Path(path)
    try:
        document = json.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the JWKS file: {exc.strerror}") from exc
    except ValueError as exc:
        raise ConfigError(f"{path}: the JWKS file is not valid JSON: {exc}") from exc
    entries = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise ConfigError(f"{path}: a JWKS file is an object with a 'keys' list")
    keys = [_pinned(jwk, f"{path}: keys[{i}]") for i, jwk in enumerate(entries) if _is_signing_key(jwk)]
    if not keys:
        raise ConfigError(f"{path}: the JWKS file holds no signing keys")
    return keys


def _is_signing_key(jwk: Any) -> bool:
    return not (isinstance(jwk, dict) and jwk.get("use") not in (None, "sig"))


def _pinned(jwk: Any, where: str) -> PinnedKey:
    if not isinstance(jwk, dict):
        raise ConfigError(f"{where}: a JWK is an object")
    kid = jwk.get("kid")
    if kid is not None and (not isinstance(kid, str) or not kid):
        raise ConfigError(f"{where}: 'kid' must be a non-empty string")
    if "d" in jwk:
        raise ConfigError(f"{where}: this is a private key; the JWKS file must hold public keys only")
    kty, crv = jwk.get("kty"), jwk.get("crv")
    if kty == "oct":
        raise ConfigError(f"{where}: symmetric keys belong in auth.jwt.hs256_secrets, not in the JWKS file")
    algorithm = jwk.get("alg") or _algorithm_of(kty, crv, where)
    if algorithm not in _PUBLIC_KEY_ALGORITHMS:
        raise ConfigError(f"{where}: alg {algorithm!r} is not one of {', '.join(_PUBLIC_KEY_ALGORITHMS)}")
    want_kty, want_crv = _PUBLIC_KEY_ALGORITHMS[algorithm]
    if kty != want_kty or (want_crv is not None and crv != want_crv):
        raise ConfigError(f"{where}: alg {algorithm} needs a {want_kty} key{f' on {want_crv}' if want_crv else ''}")
    try:
        key = jwt.PyJWK(jwk, algorithm).key
    except (jwt.PyJWTError, KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: not a usable {algorithm} key: {exc}") from exc
    return PinnedKey(kid, algorithm, key)


def _algorithm_of(kty: Any, crv: Any, where: str) -> str:
    if kty == "RSA":
        return "RS256"
    if kty == "EC" and crv == "P-256":
        return "ES256"
    raise ConfigError(f"{where}: no 'alg', and none follows from kty {kty!r} (crv {crv!r}): add an 'alg'")
