"""The live replica set: sources, draining, cordons, and the readers that follow it (router, scraper, window)."""

from __future__ import annotations

import asyncio

from sluice.admission import FixedLimit, PerReplicaLimit, Sample
from sluice.admission._ticket import Outcome
from sluice.clock import FakeClock
from sluice.engines import LoadScraper, Replica, ReplicaSet, Router

A, B, C = "http://10.0.0.1:8000", "http://10.0.0.2:8000", "http://10.0.0.3:8000"


def urls(replicas: tuple[Replica, ...]) -> list[str]:
    return [r.url for r in replicas]


def test_sync_adds_and_drains_a_sources_view() -> None:
    s = ReplicaSet()
    s.sync("dns", [A, B])
    assert urls(s.routable()) == [A, B]
    version = s.version
    s.sync("dns", [A, B])
    assert s.version == version, "an unchanged view is not a change"
    s.get(B).outstanding = 1  # type: ignore[union-attr]
    s.sync("dns", [A])
    assert urls(s.routable()) == [A] and urls(s.all()) == [A, B], "B drains: it still has a request"
    s.release(s.get(B))  # type: ignore[arg-type]
    assert urls(s.all()) == [A], "B leaves with its last request"


def test_a_replica_listed_by_two_sources_stays_while_one_lists_it() -> None:
    s = ReplicaSet()
    s.sync("static", [A])
    s.sync("dns", [A, B])
    s.sync("dns", [])
    assert urls(s.all()) == [A]


def test_a_draining_replica_that_comes_back_keeps_its_state() -> None:
    s = ReplicaSet()
    s.sync("dns", [A])
    replica = s.get(A)
    assert replica is not None
    replica.outstanding = 2
    s.sync("dns", [])
    assert s.routable() == ()
    assert replica.draining
    s.sync("dns", [A])
    back = s.get(A)
    assert back is replica
    assert s.routable() == (back,)
    assert not back.draining


def test_a_cordon_holds_against_sources_until_lifted() -> None:
    s = ReplicaSet()
    s.sync("static", [A, B])
    s.cordon([A])
    assert urls(s.all()) == [B], "an idle cordoned replica leaves at once"
    s.sync("static", [A, B])
    assert urls(s.all()) == [B], "a source does not bring a cordoned URL back"
    s.cordon([])
    assert urls(s.routable()) == [B, A], "lifting the cordon brings it back from its sources"


def test_a_cordoned_url_whose_sources_left_does_not_come_back() -> None:
    s = ReplicaSet()
    s.sync("dns", [A])
    s.cordon([A])
    s.sync("dns", [])
    s.cordon([])
    assert s.all() == ()


def test_subscribers_hear_every_change() -> None:
    s = ReplicaSet()
    seen: list[list[str]] = []
    s.subscribe(lambda rs: seen.append(urls(rs.all())))
    s.sync("dns", [A])
    s.sync("dns", [A, B])
    s.cordon([A])
    assert seen == [[A], [A, B], [B]]


def test_the_ring_follows_the_set_and_moves_only_the_leavers_keys() -> None:
    s = ReplicaSet()
    s.sync("static", [A, B, C])
    router = Router(s, "prefix_affinity")
    keys = [f"conversation-{i}" for i in range(300)]
    before = {k: router.order(s.routable(), k)[0].url for k in keys}
    s.cordon([C])
    after = {k: router.order(s.routable(), k)[0].url for k in keys}
    moved = [k for k in keys if before[k] != after[k]]
    assert moved and all(before[k] == C for k in moved)
    assert C not in after.values()
    s.sync("static", [A, B, C, "http://10.0.0.4:8000"])
    assert any(router.order(s.routable(), k)[0].url == "http://10.0.0.4:8000" for k in keys)


def test_the_window_follows_the_replicas() -> None:
    s = ReplicaSet()
    s.sync("static", [A])
    limit = PerReplicaLimit(FixedLimit(8), lambda: len(s), minimum=1, maximum=20)
    assert limit.value == 8
    s.sync("static", [A, B])
    assert limit.value == 16
    s.sync("static", [A, B, C])
    assert limit.value == 20, "capped at the maximum (the pool's connections)"
    s.sync("static", [])
    assert limit.value == 8, "no replica: one replica's window (the pool refuses anyway)"


def test_a_per_replica_limit_learns_in_one_replicas_units() -> None:
    seen: list[int] = []

    class Recorder(FixedLimit):
        def update(self, sample: Sample) -> None:
            seen.append(sample.in_flight)

    limit = PerReplicaLimit(Recorder(4), lambda: 3, minimum=1, maximum=100)
    limit.update(Sample(latency_s=0.1, in_flight=12, outcome=Outcome.SUCCESS))
    assert seen == [4]


def test_the_scraper_scrapes_replicas_added_and_forgets_those_that_leave() -> None:
    async def run() -> None:
        s = ReplicaSet()
        s.sync("dns", [A])
        scraper = LoadScraper(s, FakeClock(), interval_s=60)
        scraped: list[str] = []

        async def fake_refresh(replica: Replica) -> None:
            scraped.append(replica.url)

        scraper._refresh = fake_refresh  # type: ignore[method-assign]
        scraper.start()
        await asyncio.sleep(0)
        s.sync("dns", [A, B])
        await asyncio.sleep(0)
        assert sorted(scraped) == [A, B]
        s.sync("dns", [B])
        assert list(scraper._tasks) == [B]
        await scraper.stop()

    asyncio.run(run())
