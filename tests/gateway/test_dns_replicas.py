"""A gateway whose engine replicas come from DNS (a real dnsmasq): SRV records that change under streaming load move
traffic to the new replicas and drain the old ones, with no stream lost."""

from __future__ import annotations

from sluice.config import SimSettings, parse_settings
from sluice.identity import hash_key
from tests.conftest import LiveServer, LiveSim, serve_gateway, wait_until
from tests.dns_server import DnsServer, Srv
from tests.gateway.test_live_replicas import ADMIN, MODEL, StreamLoad, replicas

SRV_NAME = "_http._tcp.engines.llm.svc.cluster.local"
POD = "pod.llm.svc.cluster.local"


def port(sim: LiveSim) -> int:
    return int(sim.url.rsplit(":", 1)[1])


def test_replicas_follow_dns_records_under_streaming_load(dns_server: DnsServer) -> None:
    with LiveSim(SimSettings(), model_name=MODEL) as a, LiveSim(SimSettings(), model_name=MODEL) as b:
        dns_server.start({POD: ["127.0.0.1"]}, [Srv(SRV_NAME, POD, port(a))])
        settings = parse_settings({
            "auth": {"mode": "open", "admin_key_hash": hash_key(ADMIN)},
            "models": [{"name": MODEL, "engine": {"discovery": {
                "dns": SRV_NAME, "record": "SRV", "interval_s": 0.2, "nameservers": [dns_server.nameserver]}}}]})
        gateway: LiveServer
        with serve_gateway(settings) as gateway, StreamLoad(gateway.url, clients=6) as load:
            assert set(replicas(gateway)) == {a.url}, "resolved before serving"
            assert wait_until(lambda: load.completed >= 6)
            dns_server.set_records([Srv(SRV_NAME, POD, port(a)), Srv(SRV_NAME, POD, port(b))])
            assert wait_until(lambda: set(replicas(gateway)) == {a.url, b.url})
            assert replicas(gateway)[b.url]["sources"] == ["dns"]
            assert wait_until(lambda: b.engine.generation_tokens_total > 0), "the new replica got no traffic"
            dns_server.set_records([Srv(SRV_NAME, POD, port(b))])
            assert wait_until(lambda: set(replicas(gateway)) == {b.url}), "a replica gone from DNS stayed"
            served_by_a = a.engine.generation_tokens_total
            done = load.completed
            assert wait_until(lambda: load.completed >= done + 12)
        assert load.failures == []
        assert a.engine.generation_tokens_total == served_by_a, "a replica gone from DNS got new requests"
