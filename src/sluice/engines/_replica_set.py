"""The live replicas of one model pool: the one list that the router, the pool, the load scraper, the admission gate
and the metrics read.

Sources publish what they see: the configuration (``static``), DNS (``dns``), the admin API (``admin``) and the
launcher (``launcher``). ``sync(source, urls)`` is a source's whole current view: new URLs become replicas, URLs it no
longer lists lose that source, and a replica left with no source is drained. A draining replica takes no new request
and leaves the set when its last request ends, so a change never drops a stream. The admin API can also cordon a
URL (drain it): a cordoned URL stays out whatever a source says, until the cordon is lifted.

Changes are synchronous and cheap (the set is rebuilt, the version bumped, subscribers told); readers on the hot path
take ``routable()``, a tuple rebuilt only on change.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sluice.clock import Clock, MonotonicClock
from sluice.config import Dialect
from sluice.engines._breaker import CircuitBreaker
from sluice.engines._replica import Replica

ADMIN = "admin"
BreakerFactory = Callable[[], CircuitBreaker]
Subscriber = Callable[["ReplicaSet"], None]


@dataclass(eq=False)
class _Entry:
    replica: Replica
    sources: set[str] = field(default_factory=set)
    added_at: float = 0.0


class ReplicaSet:
    """The replicas of one pool, as its sources currently see them.

    >>> replicas = ReplicaSet.of([Replica("http://10.0.0.5:8000")])
    >>> replicas.sync("dns", ["http://10.0.0.6:8000"])
    >>> [r.url for r in replicas.routable()]
    ['http://10.0.0.5:8000', 'http://10.0.0.6:8000']
    """

    def __init__(self, dialect: Dialect = "vllm", *, clock: Clock | None = None,
                 breaker: BreakerFactory | None = None, name: str = "") -> None:
        self.name = name
        self.dialect = dialect
        self._clock = clock or MonotonicClock()
        self._breaker = breaker or (lambda: CircuitBreaker(self._clock))
        self._entries: dict[str, _Entry] = {}
        self._cordoned: set[str] = set()
        self._parked: dict[str, tuple[set[str], float]] = {}  # cordoned URLs out of the set: their sources, weight
        self._subscribers: list[Subscriber] = []
        self._views: dict[str, Callable[[], Any]] = {}
        self._routable: tuple[Replica, ...] = ()
        self._all: tuple[Replica, ...] = ()
        self.version = 0

    @classmethod
    def of(cls, replicas: Iterable[Replica], source: str = "static", **kwargs: Any) -> ReplicaSet:
        """A set holding ``replicas`` (objects kept as given), all from ``source``."""
        replicas = list(replicas)
        dialect = replicas[0].dialect if replicas else "vllm"
        made = cls(kwargs.pop("dialect", dialect), **kwargs)
        for replica in replicas:
            made._entries[replica.url] = _Entry(replica, {source}, made._clock.now())
        made._changed()
        return made

    # -- reading (hot path) ----------------------------------------------------------------------------------

    def routable(self) -> tuple[Replica, ...]:
        """The replicas that take new requests (not draining), in the order they were added."""
        return self._routable

    def all(self) -> tuple[Replica, ...]:
        """Every replica still in the set, draining ones included (they still finish their requests)."""
        return self._all

    def __len__(self) -> int:
        return len(self._routable)

    def get(self, url: str) -> Replica | None:
        entry = self._entries.get(url)
        return None if entry is None else entry.replica

    def describe(self, source: str, view: Callable[[], Any]) -> None:
        """Show ``view()`` in the snapshot's ``details``: what else is known of the set (a source's own state, such
        as DNS answers or launched processes; its autoscaler's)."""
        self._views[source] = view

    def subscribe(self, subscriber: Subscriber) -> None:
        """Call ``subscriber(self)`` after every change."""
        self._subscribers.append(subscriber)

    # -- changing --------------------------------------------------------------------------------------------

    def sync(self, source: str, urls: Sequence[str], weights: Sequence[float] | None = None) -> None:
        """``source`` now sees exactly ``urls``: add the new ones, drop the source from the others."""
        wanted = dict(zip(urls, weights or [1.0] * len(urls), strict=True))
        changed = False
        for url, weight in wanted.items():
            changed |= self._add(url, source, weight)
        for url, entry in list(self._entries.items()):
            if source in entry.sources and url not in wanted:
                entry.sources.discard(source)
                changed |= self._drain_if_unsourced(entry)
        for url, (sources, _) in list(self._parked.items()):
            if url not in wanted:
                sources.discard(source)
        if changed:
            self._changed()

    def cordon(self, urls: Collection[str]) -> None:
        """The admin API's cordons, whole: a cordoned URL takes no new request, leaves the set when its requests
        end and stays out whatever a source says; a URL no longer cordoned comes back if a source still lists it
        (a source's next ``sync`` brings back one that had already left)."""
        cordoned = set(urls)
        if cordoned == self._cordoned:
            return
        lifted = self._cordoned - cordoned
        self._cordoned = cordoned
        for url in cordoned:
            entry = self._entries.get(url)
            if entry is not None:
                entry.replica.draining = True
                self._reap(entry)
        for url in lifted:
            entry = self._entries.get(url)
            if entry is not None and entry.sources:
                entry.replica.draining = False
            sources, weight = self._parked.pop(url, (set(), 1.0))
            for source in sources:
                self._add(url, source, weight)
        self._changed()

    def release(self, replica: Replica) -> None:
        """One request of ``replica`` ended: a draining replica with none left leaves the set."""
        replica.outstanding -= 1
        if replica.draining and replica.outstanding <= 0:
            entry = self._entries.get(replica.url)
            if entry is not None and entry.replica is replica and self._reap(entry):
                self._changed()

    # -- state -----------------------------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """For the admin API and the console: every replica, its sources, load and circuit; the cordoned URLs."""
        now = self._clock.now()
        return {
            "version": self.version,
            "replicas": [
                {"url": e.replica.url, "dialect": e.replica.dialect, "weight": e.replica.weight,
                 "state": "draining" if e.replica.draining else "active", "sources": sorted(e.sources),
                 "outstanding": e.replica.outstanding, "breaker": e.replica.breaker.state.value,
                 "age_s": round(now - e.added_at, 3)}
                for e in self._entries.values()
            ],
            "cordoned": sorted(self._cordoned),
            "details": {name: view() for name, view in self._views.items()},
        }

    # -- inside ----------------------------------------------------------------------------------------------

    def _add(self, url: str, source: str, weight: float) -> bool:
        entry = self._entries.get(url)
        if entry is None:
            if url in self._cordoned:
                self._parked.setdefault(url, (set(), weight))[0].add(source)
                return False
            replica = Replica(url, self.dialect, weight, breaker=self._breaker())
            self._entries[url] = _Entry(replica, {source}, self._clock.now())
            return True
        entry.sources.add(source)
        if entry.replica.draining and url not in self._cordoned:
            entry.replica.draining = False  # back before its last request ended: it keeps its breaker and load
            return True
        return False

    def _drain_if_unsourced(self, entry: _Entry) -> bool:
        if entry.sources or entry.replica.draining:
            return False
        entry.replica.draining = True
        self._reap(entry)
        return True

    def _reap(self, entry: _Entry) -> bool:
        if entry.replica.draining and entry.replica.outstanding <= 0:
            url = entry.replica.url
            del self._entries[url]
            if url in self._cordoned and entry.sources:
                self._parked[url] = (entry.sources, entry.replica.weight)
            return True
        return False

    def _changed(self) -> None:
        self._all = tuple(e.replica for e in self._entries.values())
        self._routable = tuple(r for r in self._all if not r.draining)
        self.version += 1
        for subscriber in self._subscribers:
            subscriber(self)
