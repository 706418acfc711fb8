"""The state layer on a Redis Cluster: the URL forms, routing by slot on a real three-master cluster, the script
loaded on a master that lacks it, and a master killed (SIGKILL): the layer goes down, notices with no traffic that
a replica took over, and its calls land on the new master; the old master, restarted, rejoins as a replica."""

from __future__ import annotations

import asyncio
import hashlib
import uuid

import pytest
from redis.asyncio.cluster import RedisCluster

from sluice.clock import MonotonicClock
from sluice.config import Settings
from sluice.errors import StateUnavailableError
from sluice.quota import Bucket, LimitInfo
from sluice.quota._redis import RedisStore, load_script
from sluice.state import RedisState, _open_client
from tests.conftest import wait_until
from tests.redis_cluster import command


def open_state(url: str, *, timeout_s: float = 1.0, retry_s: float = 0.1) -> RedisState:
    return RedisState.from_url(url, MonotonicClock(), timeout_s=timeout_s, retry_s=retry_s)


async def test_a_cluster_url_names_every_seed_and_takes_the_plain_url_options():
    client = _open_client("redis+cluster://ops:s%40cret@127.0.0.1:7000,10.0.0.2:7001,[::1]:7002?client_name=gw")
    assert isinstance(client, RedisCluster)
    assert sorted(client.nodes_manager.startup_nodes) == ["10.0.0.2:7001", "127.0.0.1:7000", "::1:7002"]
    kwargs = client.connection_kwargs
    assert (kwargs["username"], kwargs["password"], kwargs["client_name"]) == ("ops", "s@cret", "gw")
    assert "SSL" not in kwargs["connection_class"].__mro__[2].__name__
    tls = _open_client("rediss+cluster://127.0.0.1:7000?ssl_cert_reqs=none")
    assert isinstance(tls, RedisCluster) and tls.connection_kwargs["ssl_cert_reqs"] == "none"
    assert any(c.__name__ == "SSLConnection" for c in tls.connection_kwargs["connection_class"].__mro__)
    await client.aclose()
    await tls.aclose()


@pytest.mark.parametrize("url", ["redis+cluster://", "redis+cluster://127.0.0.1", "redis+cluster://h:port"])
def test_a_cluster_url_without_a_node_is_refused(url):
    with pytest.raises(ValueError, match=r"host:port|at least one"):
        _open_client(url)


def test_the_configuration_takes_a_cluster_url():
    models = [{"name": "m", "engine": {"urls": ["http://127.0.0.1:9"]}}]
    for url in ("redis+cluster://10.0.0.1:6379,10.0.0.2:6379", "rediss+cluster://:pw@10.0.0.1:6379"):
        assert Settings.model_validate({"state": url, "models": models, "auth": {"mode": "open"}}).state == url
    with pytest.raises(ValueError, match="redis\\+cluster"):
        Settings.model_validate({"state": "cluster://10.0.0.1:6379", "models": models, "auth": {"mode": "open"}})


async def test_calls_land_on_the_master_of_their_slot(redis_cluster):
    """Keys of many hash tags spread over the three masters; each is written where its slot lives (MOVED is
    followed by the client: it was given every node as a seed, in any order)."""
    state = open_state(redis_cluster.url)
    tags = [f"{{t{i}}}" for i in range(24)]
    for tag in tags:
        await state.run(lambda client, tag=tag: client.set(f"{tag}:k", tag.encode()), "test")
    masters = {redis_cluster.master_of(tag).port for tag in tags}
    assert len(masters) == 3  # the keys did spread: routing was needed
    for tag in tags:
        assert command(redis_cluster.master_of(tag).port, "get", f"{tag}:k").strip() == tag
    await state.close()


async def test_a_master_without_the_script_loads_it(redis_cluster):
    """Scripts are not replicated: a promoted replica answers NOSCRIPT; the store loads the script on it."""
    store = RedisStore.from_url(redis_cluster.url, timeout_s=2.0)
    info = LimitInfo("requests", "test", 3, 3 * 3600.0)
    bucket = Bucket(f"{{sluice}}:test:{uuid.uuid4().hex}", 3600.0, 3, 1, info)
    assert (await store.acquire([bucket], [], uuid.uuid4().hex)).allowed
    owner = redis_cluster.master_of("{sluice}")
    command(owner.port, "script", "flush")
    sha = hashlib.sha1(load_script().encode()).hexdigest()
    assert command(owner.port, "script", "exists", sha).strip() == "0"
    assert [(await store.acquire([bucket], [], uuid.uuid4().hex)).allowed for _ in range(3)] == [True, True, False]
    assert command(owner.port, "script", "exists", sha).strip() == "1"
    await store.close()


async def test_a_stale_slot_map_is_corrected_by_the_moved_answer(redis_cluster):
    """A decision sent to a master that no longer serves its slot (a resharding, a failover seen late) is answered
    MOVED, not run: it is sent again where the slot lives, and the client's slot map is corrected."""
    store = RedisStore.from_url(redis_cluster.url, timeout_s=2.0)
    info = LimitInfo("requests", "test", 2, 2 * 3600.0)
    bucket = Bucket(f"{{sluice}}:test:{uuid.uuid4().hex}", 3600.0, 2, 1, info)
    assert (await store.acquire([bucket], [], uuid.uuid4().hex)).allowed
    client = store.state.client
    assert isinstance(client, RedisCluster)
    slot = client.keyslot("{sluice}")
    owner = client.nodes_manager.slots_cache[slot][0]
    client.nodes_manager.slots_cache[slot] = [next(n for n in client.get_primaries() if n is not owner)]
    decisions = [await store.acquire([bucket], [], uuid.uuid4().hex) for _ in range(2)]
    assert [d.allowed for d in decisions] == [True, False]  # charged once each, on the right master
    assert client.nodes_manager.slots_cache[slot][0].name == owner.name
    await store.close()


async def test_a_killed_master_is_an_outage_until_its_replica_takes_over_then_calls_land_there(redis_cluster):
    tag = "{failover-test}"
    old = redis_cluster.master_of(tag)
    others = [n for n in redis_cluster.nodes if n is not old]
    state = open_state(redis_cluster.url, timeout_s=0.5, retry_s=0.2)
    changes: list[bool] = []
    state.watch(changes.append)
    await state.run(lambda client: client.set(f"{tag}:k", b"before"), "test")
    old.kill()
    try:
        with pytest.raises(StateUnavailableError):
            for _ in range(3):  # the first call may still be retried on a fresh connection: it fails too
                await state.run(lambda client: client.get(f"{tag}:k"), "test")
        assert not state.available and changes == [False]
        # No traffic: the probe fetches the slot map again until a replica took over, and every master answers.
        assert await asyncio.to_thread(wait_until, lambda: state.available, 30.0), "the layer did not come back"
        assert changes == [False, True]
        new = redis_cluster.master_of(tag, asking=others[0])
        assert new is not old
        assert await state.run(lambda client: client.get(f"{tag}:k"), "test") == b"before"  # replicated
        await state.run(lambda client: client.set(f"{tag}:k", b"after"), "test")
        assert command(new.port, "get", f"{tag}:k").strip() == "after"
    finally:
        await state.close()
        if old.proc is None:
            old.start()  # same port, same directory (nodes.conf): it rejoins the cluster
    assert await asyncio.to_thread(
        wait_until, lambda: "slave" in redis_cluster.role(old, seen_by=others[0]), 30.0)
    await asyncio.to_thread(redis_cluster.wait_ok)
