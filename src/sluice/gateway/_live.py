"""The configuration that changes while the gateway runs: the file (reloaded on change) and the tiers changed
through the admin API (shared by every replica through the directory). One place merges the two and applies the
result to the running service: the quota policy and the authenticator are replaced whole; quota state stays.

Which wins, file or live, is decided by ``LiveTier.applies_to`` (gateway/_live_tiers.py): a live change holds
until the tier's entry in the file changes; then the file wins and the live change is dropped, with a warning."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson

from sluice.clock import Clock
from sluice.config import Settings, TierSettings
from sluice.errors import ConfigError, InvalidRequestError, NotFoundError
from sluice.gateway._live_tiers import LiveTier, Source, file_sources, fingerprint, validated
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
        self._dropping: set[tuple[str, bytes]] = set()  # live records being dropped (logged once each)
        self._tasks: set[asyncio.Task[Any]] = set()

    def attach(self, service: GatewayService) -> None:
        self._service = service

    def live_tiers(self, settings: Settings | None = None) -> dict[str, LiveTier]:
        """The directory's live tier records still in force against ``settings``' file (the others: superseded)."""
        file_tiers = (settings or self.settings).tiers
        records = {name: LiveTier.from_doc(doc) for name, doc in self.directory.snapshot.tiers.items()}
        return {name: r for name, r in records.items() if r.applies_to(file_tiers.get(name))}

    def effective_tiers(self, settings: Settings | None = None) -> dict[str, TierSettings]:
        file_tiers = (settings or self.settings).tiers
        tiers = dict(file_tiers)
        for name, record in self.live_tiers(settings).items():
            try:
                tiers[name] = record.merged(file_tiers.get(name))
            except InvalidRequestError as exc:  # written by another version of Sluice: keep the file's
                log.error("tier %s: ignoring its live settings, which no longer validate: %s", name, exc)
        return tiers

    def describe_tiers(self) -> list[dict[str, Any]]:
        """Every tier in force: its settings, and where each setting comes from (file, live or default)."""
        file_tiers, live = self.settings.tiers, self.live_tiers()
        rows = []
        for name, tier in self.effective_tiers().items():
            record, file_tier = live.get(name), file_tiers.get(name)
            sources: dict[str, Source] = record.sources(file_tier) if record else file_sources(tier)
            origin = "live" if file_tier is None else "file+live" if record else "file"
            rows.append({"name": name, "origin": origin, "replaced": bool(record and record.replace),
                         "settings": tier.model_dump(mode="json"), "sources": sources})
        return rows

    async def change_tier(self, name: str, settings: dict[str, Any], *, replace: bool) -> TierSettings:
        """PUT (``replace``) or PATCH a tier in force, on every replica."""
        await self.directory.refresh()  # what another gateway changed a moment ago counts
        tiers = self.effective_tiers()
        if name not in tiers:
            raise NotFoundError(f"No tier {name!r}.", param="name", code="tier_not_found")
        file_tier = self.settings.tiers.get(name)
        current = self.live_tiers().get(name) or LiveTier({}, False, fingerprint(file_tier))
        record = current.changed(settings, replace=replace)
        tier = record.merged(file_tier)  # a bad setting is refused here, before anything is stored
        await self.directory.put_tier(name, record.to_doc())
        return tier

    async def create_tier(self, name: str, settings: dict[str, Any]) -> TierSettings:
        await self.directory.refresh()
        if name in self.effective_tiers():
            raise InvalidRequestError(f"A tier named {name!r} exists already.", param="name", status=409,
                                      code="tier_exists")
        tier = validated(settings)
        await self.directory.put_tier(name, LiveTier(dict(settings), True, None).to_doc())
        return tier

    async def delete_tier(self, name: str) -> None:
        """Delete a tier created through the admin API; refused while a key (or the JWT default) uses it."""
        await self.directory.refresh()  # a key issued on another gateway a moment ago counts
        if name not in self.effective_tiers():
            raise NotFoundError(f"No tier {name!r}.", param="name", code="tier_not_found")
        if name in self.settings.tiers:
            raise InvalidRequestError(f"Tier {name!r} is defined in the configuration file: remove it there.",
                                      param="name", status=409, code="tier_in_config")
        users = sorted(self._keys_using(name))
        if users:
            shown = ", ".join(users[:5]) + (f" and {len(users) - 5} more" if len(users) > 5 else "")
            raise InvalidRequestError(f"Tier {name!r} is used by key(s) {shown}: move or revoke them first.",
                                      param="name", status=409, code="tier_in_use")
        await self.directory.drop_tier(name)

    def authenticator(self, settings: Settings | None = None) -> Authenticator:
        """API keys (configured and issued, less the revoked), and JWTs when ``auth.jwt`` is set (its JWKS file
        is read now: a bad one is a ConfigError)."""
        settings = settings or self.settings
        tiers = self.effective_tiers(settings)
        keyring = KeyRing(settings.keys, tiers, open_access=settings.auth.mode == "open", directory=self.directory)
        jwt = settings.auth.jwt
        return Authenticator(keyring, JwtVerifier.from_settings(jwt, tiers, self._clock) if jwt else None)

    def apply(self, settings: Settings | None = None, authenticator: Authenticator | None = None) -> None:
        """Put ``settings`` (or the current ones, with the directory's tiers) in force. ``authenticator``: one
        already built from ``settings`` (so a JWKS file is read once per reload)."""
        service = self._service
        if settings is not None:
            self.settings = settings
        self._drop_superseded()
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
                 len(tiers), len(self.live_tiers()), len(self.settings.keys))

    def _keys_using(self, tier: str) -> set[str]:
        snapshot = self.directory.snapshot
        ids = {k.id for k in self.settings.keys if k.tier == tier}
        ids |= {k.id for k in snapshot.keys.values() if k.tier == tier and k.id not in snapshot.revoked}
        jwt = self.settings.auth.jwt
        return ids | ({"auth.jwt.default_tier"} if jwt is not None and jwt.default_tier == tier else set())

    def _drop_superseded(self) -> None:
        """The file changed a tier since its live change: the file wins; the live change is dropped (and said)."""
        in_force = self.live_tiers()
        for name, doc in self.directory.snapshot.tiers.items():
            seen = (name, orjson.dumps(doc))
            if name in in_force or seen in self._dropping:
                continue
            self._dropping.add(seen)
            log.warning("tier %s: its entry in the configuration file changed after it was changed through the "
                        "admin API; the file wins and the live change %s is dropped", name,
                        LiveTier.from_doc(doc).settings)
            try:
                task = asyncio.get_running_loop().create_task(self.directory.drop_tier(name, doc))
            except RuntimeError:  # no event loop (offline use): nothing to drop it with; the file wins anyway
                continue
            self._tasks.add(task)
            task.add_done_callback(self._dropped)

    def _dropped(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("could not drop a superseded live tier change (%s); the file wins anyway",
                        task.exception())
