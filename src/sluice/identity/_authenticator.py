"""The identify step's one entry point: JWT-shaped bearer tokens go to the JWT verifier, anything else to the keys."""

from __future__ import annotations

from sluice.errors import AuthenticationError
from sluice.identity._api_keys import KeyRing, presented_key
from sluice.identity._jwt import JwtVerifier, looks_like_jwt
from sluice.identity._principal import ANONYMOUS, Principal


class Authenticator:
    """``jwt`` unset: API keys only. Under open access a token that fails verification lets its caller in as
    anonymous, as an unknown API key does: open access grants no more to a bad token than to none."""

    def __init__(self, keyring: KeyRing, jwt: JwtVerifier | None = None) -> None:
        self._keyring = keyring
        self._jwt = jwt

    def authenticate(self, authorization: str | None, api_key: str | None = None) -> Principal:
        token = presented_key(authorization, api_key)
        if self._jwt is None or token is None or not looks_like_jwt(token):
            return self._keyring.principal_of(token)
        try:
            return self._jwt.verify(token)
        except AuthenticationError:
            if self._keyring.open_access:
                return ANONYMOUS
            raise
