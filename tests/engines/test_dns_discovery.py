"""DNS discovery of engine replicas, against a real dnsmasq (tests/dns_server.py): A/AAAA and SRV records that change,
a nameserver that stops answering, a service scaled to zero; the rules on a scripted lookup; the configuration."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import pytest

from sluice.clock import FakeClock, MonotonicClock
from sluice.config import parse_settings
from sluice.config.schema import DiscoverySettings
from sluice.engines._dns import DnsDiscovery, DnsFailure, Endpoint, NameNotFound
from sluice.engines._replica import Replica
from sluice.engines._replica_set import ReplicaSet
from sluice.errors import ConfigError
from tests.dns_server import DnsServer, Srv

SVC = "vllm-headless.llm.svc.cluster.local"
SRV_NAME = f"_http._tcp.{SVC}"


def discovery(server: DnsServer, published: list[list[str]], clock: Any = None, **settings: Any) -> DnsDiscovery:
    settings = {"dns": SVC, "nameservers": [server.nameserver], "timeout_s": 2.0, **settings}
    return DnsDiscovery(DiscoverySettings(**settings), clock or MonotonicClock(), published.append)


async def until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "the condition never held"
        await asyncio.sleep(0.01)


# -- against dnsmasq -------------------------------------------------------------------------------------------


async def test_a_records_follow_the_service_as_it_scales_each_change_published_once(dns_server):
    dns_server.start({SVC: ["10.0.0.2", "10.0.0.1"]})
    published: list[list[str]] = []
    source = discovery(dns_server, published)
    two = ["http://10.0.0.1:8000", "http://10.0.0.2:8000"]

    assert await source.resolve_once() == two  # sorted
    assert await source.resolve_once() == two
    dns_server.set_hosts({SVC: ["10.0.0.1", "10.0.0.2", "10.0.0.3"]})
    await source.resolve_once()
    await source.resolve_once()
    dns_server.set_hosts({SVC: ["10.0.0.3"]})
    assert await source.resolve_once() == ["http://10.0.0.3:8000"]

    assert published == [two, [*two, "http://10.0.0.3:8000"], ["http://10.0.0.3:8000"]]
    assert source.snapshot()["last_answer"] == [{"address": "10.0.0.3", "port": 8000}]


async def test_a_and_aaaa_records_together_ipv6_in_brackets_with_the_port_and_scheme(dns_server):
    dns_server.start({SVC: ["10.0.0.1", "fd00::5", "fd00:0:0::6"], "v6-only.llm.svc.cluster.local": ["::1"]})
    published: list[list[str]] = []

    both = discovery(dns_server, published, port=8443, scheme="https")
    assert await both.resolve_once() == ["https://10.0.0.1:8443", "https://[fd00::5]:8443", "https://[fd00::6]:8443"]
    only_v6 = discovery(dns_server, published, dns="v6-only.llm.svc.cluster.local")
    assert await only_v6.resolve_once() == ["http://[::1]:8000"]


async def test_a_service_of_many_pods_is_read_whole(dns_server):
    addresses = [f"10.0.{i // 200}.{i % 200 + 1}" for i in range(300)] + [f"fd00::{i:x}" for i in range(1, 101)]
    dns_server.start({SVC: addresses})  # far more than a 512-byte or 1232-byte datagram holds: TCP it is
    source = discovery(dns_server, [])
    urls = await source.resolve_once()
    assert len(urls) == 400 and "http://10.0.1.100:8000" in urls and "http://[fd00::64]:8000" in urls


async def test_srv_records_give_targets_with_their_ports_from_the_additional_section_or_a_query(dns_server):
    hosts = {"pod-a.llm.svc.cluster.local": ["10.0.0.7"], "pod-b.llm.svc.cluster.local": ["fd00::9"],
             "pod-c.llm.svc.cluster.local": ["10.0.0.8"]}
    records = [Srv(SRV_NAME, "pod-a.llm.svc.cluster.local", 8001),
               Srv(SRV_NAME, "pod-b.llm.svc.cluster.local", 8002, priority=1, weight=50),
               # dnsmasq gives no additional record for a CNAME target: its address takes a query of its own
               Srv(SRV_NAME, "alias.llm.svc.cluster.local", 8003),
               Srv(SRV_NAME, "gone.llm.svc.cluster.local", 8004)]  # NXDOMAIN: skipped
    dns_server.start(hosts, records, cnames={"alias.llm.svc.cluster.local": "pod-c.llm.svc.cluster.local"})
    published: list[list[str]] = []
    source = discovery(dns_server, published, dns=SRV_NAME, record="SRV")

    assert await source.resolve_once() == ["http://10.0.0.7:8001", "http://10.0.0.8:8003", "http://[fd00::9]:8002"]
    answer = source.snapshot()["last_answer"]
    assert {"address": "fd00::9", "port": 8002, "priority": 1, "weight": 50} in answer
    # addresses in the additional section are not asked again; the others are
    assert dns_server.queries("pod-a.llm.svc.cluster.local", "A") == 0
    assert dns_server.queries("alias.llm.svc.cluster.local", "A") == 1

    dns_server.set_records([Srv(SRV_NAME, "pod-a.llm.svc.cluster.local", 9000)])  # dnsmasq restarted
    assert await source.resolve_once() == ["http://10.0.0.7:9000"]
    assert published[-1] == ["http://10.0.0.7:9000"] and len(published) == 2


async def test_a_nameserver_that_stops_answering_keeps_the_last_list_and_is_logged_once(dns_server, caplog):
    dns_server.start({SVC: ["10.0.0.1", "10.0.0.2"]})
    published: list[list[str]] = []
    source = discovery(dns_server, published, timeout_s=1.0)
    two = await source.resolve_once()

    caplog.set_level(logging.INFO, logger="sluice.engines")
    dns_server.pause()  # SIGSTOP: queries time out
    try:
        for _ in range(3):
            assert await source.resolve_once() == two
    finally:
        dns_server.resume()
    snapshot = source.snapshot()
    assert snapshot["failures_in_a_row"] == 3 and "no answer within 1.0 s" in snapshot["last_error"]
    dns_server.set_hosts({SVC: ["10.0.0.2"]})
    assert await source.resolve_once() == ["http://10.0.0.2:8000"]

    messages = [r.getMessage() for r in caplog.records]
    assert len([m for m in messages if " failed (" in m]) == 1
    assert len([m for m in messages if "answers again, after 3 failed attempts" in m]) == 1
    assert published == [two, ["http://10.0.0.2:8000"]]
    assert source.snapshot()["failures_in_a_row"] == 0 and source.snapshot()["last_error"] is None


async def test_a_nameserver_that_is_down_keeps_the_last_list_until_it_is_back(dns_server):
    dns_server.start({SVC: ["10.0.0.1"]})
    published: list[list[str]] = []
    source = discovery(dns_server, published, timeout_s=1.0)
    await source.resolve_once()

    dns_server.stop()  # nothing listens on the port any more
    assert await source.resolve_once() == ["http://10.0.0.1:8000"]
    assert source.snapshot()["last_error"] is not None
    dns_server.start({SVC: ["10.0.0.4"]})
    assert await source.resolve_once() == ["http://10.0.0.4:8000"]
    assert published == [["http://10.0.0.1:8000"], ["http://10.0.0.4:8000"]]


async def test_nxdomain_empties_the_list_only_when_seen_twice_in_a_row(dns_server):
    dns_server.start({SVC: ["10.0.0.1", "10.0.0.2"]})
    published: list[list[str]] = []
    source = discovery(dns_server, published)
    two = await source.resolve_once()

    dns_server.set_hosts({})  # scaled to zero: the name is gone
    assert await source.resolve_once() == two
    assert source.snapshot()["last_error"] == "NXDOMAIN" and published == [two]
    dns_server.set_hosts({SVC: ["10.0.0.1", "10.0.0.2"]})  # it was a blip
    assert await source.resolve_once() == two
    dns_server.set_hosts({})
    assert await source.resolve_once() == two  # the streak started again
    assert await source.resolve_once() == []
    assert await source.resolve_once() == []
    dns_server.set_hosts({SVC: ["10.0.0.3"]})
    assert await source.resolve_once() == ["http://10.0.0.3:8000"]
    assert published == [two, [], ["http://10.0.0.3:8000"]]


async def test_a_name_without_address_records_is_an_empty_answer(dns_server):
    plain = "plain.llm.svc.cluster.local"  # only an SRV record under this name: A and AAAA answer NODATA
    dns_server.start({"pod-a.llm.svc.cluster.local": ["10.0.0.7"]}, [Srv(plain, "pod-a.llm.svc.cluster.local", 80)])
    published: list[list[str]] = []
    source = discovery(dns_server, published, dns=plain)
    assert await source.resolve_once() == []
    assert source.snapshot()["last_error"] == "no record" and published == []
    assert await source.resolve_once() == [] and published == [[]]


async def test_re_resolution_follows_the_interval_on_the_injected_clock(dns_server):
    dns_server.start({SVC: ["10.0.0.1"]})
    published: list[list[str]] = []
    clock = FakeClock()
    source = discovery(dns_server, published, clock=clock, interval_s=5.0)
    source.start()
    try:
        await until(lambda: len(published) == 1)
        dns_server.set_hosts({SVC: ["10.0.0.1", "10.0.0.2"]})
        clock.advance(4.9)
        await asyncio.sleep(0.3)  # real time for a query, were one sent: none is, the interval has not passed
        assert published == [["http://10.0.0.1:8000"]]
        clock.advance(0.1)
        await until(lambda: len(published) == 2)
        assert published[1] == ["http://10.0.0.1:8000", "http://10.0.0.2:8000"]
    finally:
        await source.close()


async def test_discovered_replicas_join_the_static_ones_in_the_replica_set(dns_server):
    dns_server.start({SVC: ["10.0.0.1", "10.0.0.2"]})
    replicas = ReplicaSet.of([Replica("http://10.0.0.9:8000")])  # engine.urls
    source = DnsDiscovery(DiscoverySettings(dns=SVC, nameservers=[dns_server.nameserver]), MonotonicClock(),
                          lambda urls: replicas.sync("dns", urls))
    await source.resolve_once()
    assert sorted(r.url for r in replicas.routable()) == [
        "http://10.0.0.1:8000", "http://10.0.0.2:8000", "http://10.0.0.9:8000"]

    busy = replicas.get("http://10.0.0.2:8000")
    assert busy is not None
    busy.outstanding += 1  # a stream in flight on the replica about to go
    dns_server.set_hosts({SVC: ["10.0.0.1"]})
    await source.resolve_once()
    assert sorted(r.url for r in replicas.routable()) == ["http://10.0.0.1:8000", "http://10.0.0.9:8000"]
    assert busy in replicas.all() and busy.draining  # drained, not dropped
    replicas.release(busy)
    assert busy not in replicas.all()


# -- the rules, on a scripted lookup ---------------------------------------------------------------------------


class Scripted:
    """A ``Lookup`` answering from a script: endpoints, or an exception to raise."""

    def __init__(self, *answers: list[Endpoint] | Exception) -> None:
        self.answers = list(answers)
        self.calls = 0

    async def endpoints(self) -> list[Endpoint]:
        answer = self.answers[min(self.calls, len(self.answers) - 1)]
        self.calls += 1
        if isinstance(answer, Exception):
            raise answer
        return answer


A = [Endpoint("10.0.0.1", 8000)]
A_URLS = ["http://10.0.0.1:8000"]


def scripted(lookup: Scripted, published: list[list[str]], clock: Any = None, **settings: Any) -> DnsDiscovery:
    return DnsDiscovery(DiscoverySettings(**{"dns": SVC, **settings}), clock or FakeClock(), published.append,
                        lookup=lookup)


async def test_a_failure_between_two_empty_answers_neither_breaks_nor_adds_to_the_streak():
    published: list[list[str]] = []
    source = scripted(Scripted(A, NameNotFound(), DnsFailure("timeout"), DnsFailure("timeout"), []), published)
    for _ in range(4):
        assert await source.resolve_once() == A_URLS
    assert await source.resolve_once() == []
    assert published == [A_URLS, []]


async def test_duplicates_are_published_once_sorted():
    published: list[list[str]] = []
    answer = [Endpoint("10.0.0.9", 8000), Endpoint("10.0.0.10", 8000), Endpoint("10.0.0.9", 8000)]
    source = scripted(Scripted(answer, list(reversed(answer))), published)
    await source.resolve_once()
    await source.resolve_once()
    assert published == [["http://10.0.0.10:8000", "http://10.0.0.9:8000"]]


async def test_the_loop_resolves_every_interval_and_survives_a_publish_that_raises():
    clock = FakeClock()
    lookup = Scripted(A)
    seen: list[list[str]] = []

    def publish(urls: list[str]) -> None:
        seen.append(urls)
        if len(seen) == 1:
            raise RuntimeError("the replica set refused")

    source = DnsDiscovery(DiscoverySettings(dns=SVC, interval_s=5.0), clock, publish, lookup=lookup)
    source.start()
    try:
        await clock.run_for(12.0)  # resolutions at 0, 5 and 10
        assert lookup.calls == 3
        assert seen == [A_URLS, A_URLS]  # the failed publish was tried again, then nothing new
    finally:
        await source.close()
    await clock.run_for(10.0)
    assert lookup.calls == 3  # closed: no more queries


async def test_the_snapshot_says_what_was_asked_and_what_came_back():
    clock = FakeClock(wall_start=1_800_000_000.0)
    source = scripted(Scripted([Endpoint("fd00::1", 8001, 10, 20)], DnsFailure("SERVFAIL")), [], clock,
                      dns=SRV_NAME, record="SRV", nameservers=["10.96.0.10"])
    await source.resolve_once()
    clock.advance(5)
    await source.resolve_once()
    assert source.snapshot() == {
        "name": SRV_NAME, "record": "SRV", "interval_s": 5.0, "nameservers": ["10.96.0.10:53"],
        "replicas": ["http://[fd00::1]:8001"],
        "last_answer": [{"address": "fd00::1", "port": 8001, "priority": 10, "weight": 20}],
        "last_error": "SERVFAIL", "resolved_at": 1_800_000_000.0, "failures_in_a_row": 1, "empty_answers_in_a_row": 0,
    }


# -- configuration ---------------------------------------------------------------------------------------------


def engine(**engine: Any) -> dict[str, Any]:
    return {"auth": {"mode": "open"}, "models": [{"name": "m", "engine": engine}]}


def test_discovery_alone_or_beside_urls_is_a_valid_engine():
    alone = parse_settings(engine(discovery={"dns": SVC + "."}))
    assert alone.models[0].engine is not None and alone.models[0].engine.urls == []
    found = alone.models[0].engine.discovery
    assert found is not None and (found.dns, found.record, found.port, found.scheme) == (SVC, "A", 8000, "http")
    both = parse_settings(engine(urls=["http://10.0.0.1:8000"], discovery={
        "dns": SRV_NAME, "record": "SRV", "nameservers": ["127.0.0.1:5353", "fd00::10", "[::1]:53"]}))
    found = both.models[0].engine.discovery  # type: ignore[union-attr]
    assert found is not None and found.port is None
    assert found.nameserver_addresses == [("127.0.0.1", 5353), ("fd00::10", 53), ("::1", 53)]


@pytest.mark.parametrize(("engine_settings", "message"), [
    ({"discovery": {"dns": "vllm"}}, "is not a fully qualified DNS name"),
    ({"discovery": {"dns": "a..b.local"}}, "is not a fully qualified DNS name"),
    ({"discovery": {"dns": "-a.b.local"}}, "is not a fully qualified DNS name"),
    ({"discovery": {"dns": "10.0.0.5"}}, "is an address, not a name: list it in engine.urls"),
    ({"discovery": {"dns": SRV_NAME}}, "is an SRV name (it starts with '_'): set record: SRV"),
    ({"discovery": {"dns": SRV_NAME, "record": "SRV", "port": 80}}, "SRV records carry their own ports"),
    ({"discovery": {"dns": SVC, "port": 0}}, "port"),
    ({"discovery": {"dns": SVC, "record": "AAAA"}}, "record"),
    ({"discovery": {"dns": SVC, "nameservers": ["dns.local:53"]}}, "is not an IP address"),
    ({"discovery": {"dns": SVC, "nameservers": ["10.0.0.1:99999"]}}, "the port must be 1..65535"),
    ({"discovery": {"dns": SVC, "nameservers": []}}, "at least one address"),
    ({"discovery": {"dns": SVC, "interval_s": 0}}, "interval_s"),
])
def test_bad_discovery_settings_are_refused_with_a_clear_message(engine_settings, message):
    with pytest.raises(ConfigError) as refused:
        parse_settings(engine(**engine_settings))
    assert message in str(refused.value)
