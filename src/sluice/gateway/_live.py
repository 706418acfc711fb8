"""The configuration that changes while the gateway runs: the file (reloaded on change) and the tiers changed
through the admin API (shared by every replica through the directory). One place merges the two and applies the
result to the running service: the quota policy and the authenticator are replaced whole; quota state stays."""

from __future__ import annotations

import logging

from sluice.clock import Clock
from sluice.config import Settings, TierSettings
from sluice.errors import ConfigError
from sluice.gateway.service import GatewayService
from sluice.identity import Authenticator, Directory, JwtVerifier, KeyRing
from sluice.quota import QuotaPolicy

log = logging.getLogger("sluice")


class LiveConfig:
    def __init__(self, settings: Settings, directory: Directory, clock: Clock) -> None:
        self.settings = settings
        self.directory = directory
        self._clock = clock
        self._service: GatewayService | None = None

    def attach(self, service: GatewayService) -> None:
        self._service = service

    def effective_tiers(self) -> dict[str, TierSettings]:
        tiers = dict(self.settings.tiers)
        for name, doc in self.directory.snapshot.tiers.items():
            if name in tiers:
                tiers[name] = TierSettings.model_validate(doc)
        return tiers

    def authenticator(self, settings: Settings | None = None) -> Authenticator:
        """API keys (configured and issued, less the revoked), and JWTs when ``auth.jwt`` is set (its JWKS file
        is read now: a bad one is a ConfigError)."""
        settings = settings or self.settings
        tiers = self.effective_tiers() if settings is self.settings else settings.tiers
        keyring = KeyRing(settings.keys, tiers, open_access=settings.auth.mode == "open", directory=self.directory)
        jwt = settings.auth.jwt
        return Authenticator(keyring, JwtVerifier.from_settings(jwt, tiers, self._clock) if jwt else None)

    def apply(self, settings: Settings | None = None, authenticator: Authenticator | None = None) -> None:
        """Put ``settings`` (or the current ones, with the directory's tiers) in force. ``authenticator``: one
        already built from ``settings`` (so a JWKS file is read once per reload)."""
        service = self._service
        if settings is not None:
            self.settings = settings
        if service is None:
            return
        if authenticator is None:
            try:
                authenticator = self.authenticator()
            except ConfigError as exc:
                log.error("could not apply the tiers changed through the admin API: %s", exc)
                return
        tiers = self.effective_tiers()
        service.limiter.policy = QuotaPolicy(tiers, self.settings.quota)
        service.keyring = authenticator
        log.info("in force: %d tier(s) (%d changed through the admin API), %d configured key(s)",
                 len(tiers), len(self.directory.snapshot.tiers), len(self.settings.keys))
