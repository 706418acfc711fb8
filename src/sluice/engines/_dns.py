"""Engine replicas found in DNS, the Kubernetes way: the A/AAAA or SRV records of a headless Service, re-resolved.

``DnsDiscovery`` resolves ``settings.dns`` every ``interval_s`` and hands the replica URLs it finds (sorted,
de-duplicated, IPv6 as ``http://[fd00::5]:8000``) to ``publish``, the pool's ``ReplicaSet.sync("dns", urls)``, only
when they change. What an answer does to the list:

- addresses: the list becomes them;
- a failure (timeout, SERVFAIL, REFUSED, no nameserver answering): the list stays as it was, and the outage is logged
  once when it starts and once when it ends, not at every attempt. A DNS outage never empties a pool;
- NXDOMAIN or no record (the Service scaled to zero): the list empties only when the second such answer in a row
  comes, one interval later. One empty answer alone is too weak a reason to drain every replica: a DNS server
  restarting or resyncing (CoreDNS before its first Kubernetes watch, a zone reload) can give one, and the cost of
  waiting is one interval. A failure in between counts for nothing either way.

Re-resolution follows ``interval_s``, not the records' TTL: a TTL says how long a cache may keep an answer, not when
it changes, and in-cluster answers carry tiny ones (CoreDNS: 5 s, dnsmasq's local records: 0), which would turn
into a busy loop; a replica that goes away before its record does is caught by health checks and its breaker.
Nothing is cached between resolutions: each asks the nameservers again.

SRV records give targets and ports; a target's addresses come from the answer's additional section, else from a
query of their own (a target without any address is skipped). Priority and weight are kept in the snapshot but not
used: every target is a replica of weight 1, balanced by measured load (Kubernetes gives every endpoint the same
weight anyway).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import dns.asyncresolver
import dns.exception
import dns.name
import dns.nameserver
import dns.rdatatype
import dns.resolver
import dns.rrset

from sluice.clock import Clock
from sluice.config.schema import DiscoverySettings
from sluice.errors import ConfigError

log = logging.getLogger("sluice.engines")

Publish = Callable[[list[str]], None]
_ADDRESS_TYPES = (dns.rdatatype.A, dns.rdatatype.AAAA)
_T = TypeVar("_T")


class DnsFailure(Exception):
    """No usable answer: a timeout, SERVFAIL, REFUSED, or no nameserver reachable."""


class NameNotFound(Exception):
    """NXDOMAIN: the name does not exist (as a headless Service without endpoints may answer)."""


@dataclass(frozen=True, order=True)
class Endpoint:
    address: str  # an IP address, written as ``ipaddress`` writes it
    port: int
    priority: int = 0  # SRV only
    weight: int = 0  # SRV only


class Lookup(Protocol):
    async def endpoints(self) -> list[Endpoint]:
        """Every endpoint the name has now ([] when it has no record); raise ``NameNotFound`` or ``DnsFailure``."""
        ...


class DnsLookup:
    """The real ``Lookup``: dnspython's asyncio resolver on the configured (or the system's) nameservers."""

    def __init__(self, settings: DiscoverySettings) -> None:
        self._settings = settings
        configured = settings.nameserver_addresses
        try:
            self._resolver = dns.asyncresolver.Resolver(configure=not configured)
        except dns.exception.DNSException as exc:  # no /etc/resolv.conf, or one without a nameserver
            raise ConfigError(f"DNS discovery of {settings.dns}: no system resolver ({exc}); set nameservers") from exc
        if configured:
            self._resolver.nameservers = [dns.nameserver.Do53Nameserver(ip, port) for ip, port in configured]
        self._resolver.lifetime = settings.timeout_s
        self._resolver.timeout = settings.timeout_s / 2  # one retry within the budget, for a lost UDP packet
        self._resolver.cache = None
        # EDNS0 with 1232-byte UDP answers (DNS flag day 2020): a Service with dozens of pods still fits one datagram,
        # where the classic 512 bytes would truncate it and make every resolution go again over TCP
        self._resolver.use_edns(0, 0, 1232)

    async def endpoints(self) -> list[Endpoint]:
        try:
            async with asyncio.timeout(self._settings.timeout_s):  # the budget of the SRV query and its follow-ups
                if self._settings.record == "SRV":
                    return await self._services(self._settings.dns)
                port = self._settings.port or 8000
                return [Endpoint(address, port) for address in await self._addresses(self._settings.dns)]
        except TimeoutError as exc:
            raise DnsFailure(f"no answer within {self._settings.timeout_s} s") from exc

    async def _addresses(self, name: str) -> list[str]:
        """The A and AAAA records of ``name``; a failure of either fails both (half an answer would drop replicas)."""
        a, aaaa = await _all([self._query(name, "A"), self._query(name, "AAAA")])
        return _addresses_in([*a, *aaaa])

    async def _services(self, name: str) -> list[Endpoint]:
        answer = await self._query_answer(name, "SRV")
        records = [r for r in (answer.rrset or ()) if r.target != dns.name.root]  # "." : no service there
        extra = list(answer.response.additional)
        known = {r.target: _addresses_in(s for s in extra if s.name == r.target) for r in records}
        missing = [target for target, addresses in known.items() if not addresses]
        found = await _all([self._addresses_or_none(t) for t in missing])
        known.update(zip(missing, found, strict=True))
        return [Endpoint(address, r.port, r.priority, r.weight) for r in records for address in known[r.target]]

    async def _addresses_or_none(self, target: dns.name.Name) -> list[str]:
        try:
            return await self._addresses(target.to_text())
        except NameNotFound:
            log.debug("the SRV target %s has no address: skipped", target)
            return []

    async def _query(self, name: str, rdtype: str) -> list[dns.rrset.RRset]:
        answer = await self._query_answer(name, rdtype)
        return [answer.rrset] if answer.rrset is not None else []

    async def _query_answer(self, name: str, rdtype: str) -> dns.resolver.Answer:
        try:
            return await self._resolver.resolve(dns.name.from_text(name), rdtype, raise_on_no_answer=False,
                                                search=False)
        except dns.resolver.NXDOMAIN as exc:
            raise NameNotFound(f"{name}: NXDOMAIN") from exc
        except (dns.exception.DNSException, OSError) as exc:
            raise DnsFailure(f"{name} {rdtype}: {type(exc).__name__}: {exc}") from exc


async def _all(queries: list[Coroutine[Any, Any, _T]]) -> list[_T]:
    """Every query's result, all of them awaited even when one fails; then the first failure (a ``DnsFailure``
    before a ``NameNotFound``: an answer half missing is no answer) is raised."""
    results = await asyncio.gather(*queries, return_exceptions=True)
    errors = sorted((r for r in results if isinstance(r, BaseException)), key=lambda e: not isinstance(e, DnsFailure))
    if errors:
        raise errors[0]
    return [r for r in results if not isinstance(r, BaseException)]


def _addresses_in(rrsets: Iterable[dns.rrset.RRset]) -> list[str]:
    return [str(ipaddress.ip_address(r.address)) for s in rrsets if s.rdtype in _ADDRESS_TYPES for r in s]


class DnsDiscovery:
    """One pool's DNS source: resolve, apply the rules above, publish on change; ``snapshot()`` for the admin API."""

    def __init__(self, settings: DiscoverySettings, clock: Clock, publish: Publish, *,
                 lookup: Lookup | None = None) -> None:
        self._settings = settings
        self._clock = clock
        self._publish = publish
        self._lookup = lookup if lookup is not None else DnsLookup(settings)
        self._published: list[str] | None = None  # None: nothing published yet
        self._last_answer: list[Endpoint] | None = None
        self._last_error: str | None = None
        self._resolved_at: float | None = None  # wall time of the last answer (addresses, NXDOMAIN or none)
        self._empty_in_a_row = 0
        self._failures_in_a_row = 0
        self._failing_since: float | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def urls(self) -> list[str]:
        """The replica URLs this source stands by now (the last ones published)."""
        return list(self._published or [])

    def start(self) -> None:
        """Resolve now, then every ``interval_s``, in a task of the running event loop."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name=f"dns {self._settings.dns}")

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def resolve_once(self) -> list[str]:
        """Resolve once and publish if the list changed; the URLs this source stands by afterwards."""
        try:
            endpoints = await self._lookup.endpoints()
        except NameNotFound:
            self._answered([], "NXDOMAIN")
        except DnsFailure as exc:
            self._failed(str(exc))
        else:
            self._answered(endpoints, None if endpoints else "no record")
        return self.urls

    def snapshot(self) -> dict[str, Any]:
        s = self._settings
        return {
            "name": s.dns, "record": "A/AAAA" if s.record == "A" else "SRV", "interval_s": s.interval_s,
            "nameservers": s.nameservers or "system", "replicas": self.urls,
            "last_answer": None if self._last_answer is None else [
                {"address": e.address, "port": e.port, **({"priority": e.priority, "weight": e.weight}
                                                          if s.record == "SRV" else {})}
                for e in self._last_answer],
            "last_error": self._last_error, "resolved_at": self._resolved_at,
            "failures_in_a_row": self._failures_in_a_row, "empty_answers_in_a_row": self._empty_in_a_row,
        }

    # -- inside ----------------------------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            try:
                await self.resolve_once()
            except Exception:  # a publish that raised, or a bug: logged, and the next round tries again
                log.exception("DNS discovery of %s: this round failed; the replicas stay as they were",
                              self._settings.dns)
            await self._clock.sleep(self._settings.interval_s)

    def _answered(self, endpoints: list[Endpoint], empty_why: str | None) -> None:
        if self._failing_since is not None:
            log.info("DNS discovery of %s: answers again, after %d failed attempts over %.1f s", self._settings.dns,
                     self._failures_in_a_row, self._clock.now() - self._failing_since)
        self._failing_since, self._failures_in_a_row = None, 0
        self._last_answer, self._last_error, self._resolved_at = endpoints, empty_why, self._clock.wall()
        if endpoints:
            self._empty_in_a_row = 0
            self._set(sorted({self._url(e) for e in endpoints}))
            return
        self._empty_in_a_row += 1
        if self._empty_in_a_row >= 2:
            self._set([])
        elif self._published:
            log.warning("DNS discovery of %s: %s; its %d replicas stay unless the next answer says so too",
                        self._settings.dns, empty_why, len(self._published))

    def _failed(self, error: str) -> None:
        self._last_error = error
        self._failures_in_a_row += 1
        if self._failing_since is None:
            self._failing_since = self._clock.now()
            log.warning("DNS discovery of %s failed (%s); keeping its %d replicas until it answers",
                        self._settings.dns, error, len(self._published or []))

    def _set(self, urls: list[str]) -> None:
        if urls == self._published:
            return
        if not urls and self._published:
            log.warning("DNS discovery of %s: no replica left (%s twice in a row)", self._settings.dns,
                        self._last_error)
        self._publish(list(urls))
        self._published = urls  # after publish: one that raised is tried again at the next answer

    def _url(self, endpoint: Endpoint) -> str:
        host = f"[{endpoint.address}]" if ":" in endpoint.address else endpoint.address
        return f"{self._settings.scheme}://{host}:{endpoint.port}"
