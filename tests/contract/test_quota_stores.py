"""One contract, every quota store: memory, Redis (a real server), Redis behind the failover wrapper, and a real Redis
Cluster (three masters, three replicas). A decision's keys share one hash tag, as the gateway's do (``{sluice}``):
a cluster runs a script on one slot."""

from __future__ import annotations

import asyncio
import math
import types
import uuid

import pytest

from sluice.clock import MonotonicClock
from sluice.errors import StateUnavailableError
from sluice.quota import Bucket, FailoverStore, Lease, LimitInfo, MemoryStore
from sluice.quota._redis import RedisStore
from tests.garbage import left_for_the_collector
from tests.redis_server import free_port

HOUR = 3600.0


@pytest.fixture(params=["memory", "redis", "failover", "cluster"])
async def store(request):
    kind = request.param
    if kind == "memory":
        yield MemoryStore(MonotonicClock())
        return
    server = request.getfixturevalue("redis_cluster" if kind == "cluster" else "redis_server")
    shared = RedisStore.from_url(server.url, timeout_s=2.0)
    if kind in ("redis", "cluster"):
        yield shared
    else:
        yield FailoverStore(shared, MonotonicClock(), replicas=1)
    await shared.close()


def bucket(capacity: int, cost: int = 1, interval_s: float = HOUR, kind: str = "requests", key: str | None = None):
    info = LimitInfo(kind, "test", capacity, interval_s * capacity)  # type: ignore[arg-type]
    return Bucket(key or f"{{test}}:{uuid.uuid4().hex}", interval_s, capacity, cost, info)


def lease(limit: int, ttl_s: float = 60.0, key: str | None = None):
    return Lease(key or f"{{test}}:{uuid.uuid4().hex}", limit, ttl_s, "test")


def rid() -> str:
    return uuid.uuid4().hex


async def test_a_full_bucket_admits_exactly_its_burst(store):
    b = bucket(5)
    results = [await store.acquire([b], [], rid()) for _ in range(7)]
    assert [d.allowed for d in results] == [True] * 5 + [False] * 2
    assert [d.states[0].remaining for d in results[:5]] == [4, 3, 2, 1, 0]
    assert results[5].refused_bucket == 0
    assert HOUR - 5 < results[5].retry_after_s <= HOUR  # one unit drips back per hour


async def test_concurrent_decisions_admit_exactly_the_burst(store):
    b = bucket(7)
    decisions = await asyncio.gather(*(store.acquire([b], [], rid()) for _ in range(50)))
    assert sum(d.allowed for d in decisions) == 7


async def test_integer_costs(store):
    b = bucket(100, cost=30)
    decisions = [await store.acquire([b], [], rid()) for _ in range(4)]
    assert [d.allowed for d in decisions] == [True, True, True, False]
    assert decisions[2].states[0].remaining == 10


async def test_all_or_nothing_a_refusal_consumes_nothing(store):
    wide, narrow = bucket(10), bucket(1)
    assert (await store.acquire([wide, narrow], [], rid())).allowed
    refused = await store.acquire([wide, narrow], [], rid())
    assert not refused.allowed and refused.refused_bucket == 1
    alone = await store.acquire([wide], [], rid())
    assert alone.allowed and alone.states[0].remaining == 8  # 10 - first - this one: the refusal took nothing


async def test_a_cost_above_capacity_can_never_fit(store):
    d = await store.acquire([bucket(10, cost=11)], [], rid())
    assert not d.allowed and d.never and math.isinf(d.retry_after_s)


async def test_refunds_and_extra_charges(store):
    b = bucket(100, cost=80)
    assert (await store.acquire([b], [], rid())).allowed
    await store.settle([b], [-50], [], rid())  # used only 30 of the 80 reserved
    assert (await store.acquire([bucket(100, cost=60, key=b.key)], [], rid())).allowed
    await store.settle([b], [+500], [], rid())  # the answer was longer than reserved: the bucket goes into debt
    assert not (await store.acquire([bucket(100, cost=1, key=b.key)], [], rid())).allowed


async def test_reset_and_remaining_describe_the_bucket(store):
    d = await store.acquire([bucket(10, interval_s=6.0)], [], rid())
    assert d.states[0].remaining == 9
    assert 5.0 < d.states[0].reset_s <= 6.0


async def test_refill_over_time(store):
    b = bucket(2, interval_s=0.05)
    assert all([(await store.acquire([b], [], rid())).allowed for _ in range(2)])
    assert not (await store.acquire([b], [], rid())).allowed
    await asyncio.sleep(0.15)
    assert (await store.acquire([b], [], rid())).allowed


async def test_leases_bound_concurrency_and_release_frees_them(store):
    l2 = lease(2)
    a, b, c = rid(), rid(), rid()
    assert (await store.acquire([], [l2], a)).allowed
    assert (await store.acquire([], [l2], b)).allowed
    refused = await store.acquire([], [l2], c)
    assert not refused.allowed and refused.refused_lease == 0
    await store.settle([], [], [l2], a)
    assert (await store.acquire([], [l2], c)).allowed


async def test_a_full_lease_set_charges_no_bucket(store):
    l1, b = lease(1), bucket(10)
    assert (await store.acquire([b], [l1], rid())).allowed
    assert not (await store.acquire([b], [l1], rid())).allowed
    assert (await store.acquire([b], [], rid())).states[0].remaining == 8


async def test_leases_expire_unless_renewed(store):
    expiring, renewed = lease(1, ttl_s=0.2), lease(1, ttl_s=0.2)
    holder = rid()
    assert (await store.acquire([], [expiring, renewed], holder)).allowed
    for _ in range(3):
        await asyncio.sleep(0.1)
        await store.renew([renewed], holder)
    assert (await store.acquire([], [expiring], rid())).allowed, "a dead holder's permit did not expire"
    assert not (await store.acquire([], [renewed], rid())).allowed, "a renewed permit expired"


async def test_a_changed_rate_keeps_the_units_already_used(store):
    old = bucket(1)  # one an hour, used up
    assert (await store.acquire([old], [], rid())).allowed
    new = bucket(5, key=old.key, interval_s=HOUR / 5)  # the tier now allows five an hour
    d = await store.acquire([new], [], rid())
    assert d.allowed and d.states[0].remaining == 3  # 5 - the one used before - this one


async def test_a_refusal_reports_the_other_buckets_as_they_stand(store):
    wide, narrow, conc = bucket(10), bucket(1), lease(1)
    assert (await store.acquire([wide, narrow], [conc], rid())).allowed
    by_bucket = await store.acquire([wide, narrow], [], rid())
    assert not by_bucket.allowed and by_bucket.states[0].remaining == 9  # not 8: this refusal charged nothing
    by_lease = await store.acquire([wide], [conc], rid())
    assert not by_lease.allowed and by_lease.states[0].remaining == 9


async def test_redis_keys_expire_once_the_bucket_is_full_again(redis_server):
    import redis.asyncio as aioredis

    store = RedisStore.from_url(redis_server.url)
    b, l1 = bucket(10, interval_s=2.0), lease(1, ttl_s=5.0)
    assert (await store.acquire([b], [l1], rid())).allowed
    client = aioredis.from_url(redis_server.url)
    assert 0 < await client.pttl(b.key) <= 2000 + 1000  # full again after one interval, plus a second's slack
    assert 0 < await client.pttl(l1.key) <= 5000 + 1000
    await client.aclose()
    await store.close()


async def test_a_decision_abandoned_by_its_caller_gives_back_what_it_took(store):
    b, l1 = bucket(100), lease(1)
    kept = 0
    for _ in range(20):  # callers that leave while their decision is on its way (e.g. their client hung up)
        holder = rid()
        task = asyncio.create_task(store.acquire([b], [l1], holder))
        await asyncio.sleep(0)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        if not task.cancelled() and task.result().allowed:  # it had already answered: a normal caller settles
            kept += 1
            await store.settle([], [], [l1], holder)
    await asyncio.sleep(0.2)  # give-backs travel in the next calls
    d = await store.acquire([b], [l1], rid())
    assert d.allowed, "an abandoned decision still holds the only permit"
    assert d.states[0].remaining == 100 - kept - 1, "an abandoned decision kept its charge"


async def test_a_grant_whose_caller_is_cancelled_before_it_resumes_is_given_back(redis_server, monkeypatch):
    """The reply arrives and the caller's task is cancelled in the same loop turn, before it could resume: the
    answer is lost to the caller, so the store gives back what the decision took."""
    import sluice.quota._redis as redis_store

    store = RedisStore.from_url(redis_server.url)
    b, l1 = bucket(10), lease(1)
    held = rid()
    granted = await store.acquire([b], [l1], held)  # really taken in Redis: one unit and the only permit
    assert granted.allowed
    monkeypatch.setattr(redis_store, "MAX_CALLS_IN_FLIGHT", 0)  # the next decision waits in the queue, unsent
    task = asyncio.create_task(store.acquire([b], [l1], held))
    await asyncio.sleep(0)
    (pending,) = store._queue
    store._queue.clear()
    pending.future.set_result([1, -1, -1, 0, [[9, 0, 0]]])  # the reply of the decision taken above ...
    task.cancel()  # ... and the client gone in the same instant
    with pytest.raises(asyncio.CancelledError):
        await task
    monkeypatch.setattr(redis_store, "MAX_CALLS_IN_FLIGHT", 4)
    store._kick()  # the give-back, queued meanwhile
    await asyncio.sleep(0.2)
    d = await store.acquire([b], [l1], rid())
    assert d.allowed, "the decision whose caller vanished still holds the only permit"
    assert d.states[0].remaining == 9, "its unit was not refunded"
    await store.close()


async def test_a_timed_out_decision_that_runs_later_is_voided_refunded_and_released(redis_server):
    """A call that times out may still run in Redis later (here: Redis busy for 0.3 s, the call waiting in its
    socket). The store voids it: once Redis answers again, the decision is refunded and its permit released,
    whichever of the two runs first."""
    import redis.asyncio as aioredis

    store = RedisStore.from_url(redis_server.url, timeout_s=0.05, retry_s=0.1)
    await store.acquire([], [lease(1)], rid())  # its connection is open before Redis gets busy
    blocker = aioredis.from_url(redis_server.url)
    busy = asyncio.create_task(blocker.eval(  # Redis busy for 0.3 s: calls sent meanwhile wait in their sockets
        "local t0 = redis.call('TIME') repeat local t = redis.call('TIME') "
        "until (t[1] - t0[1]) * 1000000 + (t[2] - t0[2]) > 300000 return 1", 0))
    await asyncio.sleep(0.05)
    b, l1 = bucket(10), lease(1)
    with pytest.raises(StateUnavailableError):
        await store.acquire([b], [l1], rid())
    await busy
    await store.give_back.drained()  # the void, sent once the state layer's probe saw Redis answer again
    check = RedisStore.from_url(redis_server.url, timeout_s=2.0)
    d = await check.acquire([b], [l1], rid())
    assert d.allowed, "the timed-out decision still holds the only permit"
    assert d.states[0].remaining == 9, "the timed-out decision kept its charge"
    for client in (check, store):
        await client.close()
    await blocker.aclose()


async def test_redis_store_loads_its_script_again_after_a_flush(redis_server):
    import redis.asyncio as aioredis

    store = RedisStore.from_url(redis_server.url)
    b = bucket(10)
    assert (await store.acquire([b], [], rid())).allowed
    admin = aioredis.from_url(redis_server.url)
    await admin.script_flush()  # as a restarted Redis: EVALSHA answers NOSCRIPT
    d = await store.acquire([b], [], rid())
    assert d.allowed and d.states[0].remaining == 8
    await admin.aclose()
    await store.close()


async def test_a_busy_gateway_loop_is_not_mistaken_for_a_slow_redis(redis_server):
    """Redis answers the decision after ~10 ms, inside the 20 ms store timeout, but the gateway's loop is blocked
    from 5 to 85 ms: the answer waits in the socket, and the decision is that answer, not a timeout (no degraded
    mode). asyncio.timeout would call it a timeout: its timer comes due before the loop reads the socket."""
    import time

    import redis.asyncio as aioredis

    store = RedisStore.from_url(redis_server.url, timeout_s=0.02)
    b = bucket(10)
    await store.acquire([b], [], rid())  # connection open, script loaded
    blocker = aioredis.from_url(redis_server.url)
    await blocker.ping()
    busy = asyncio.create_task(blocker.eval(  # Redis busy for 10 ms: the decision waits behind it
        "local t0 = redis.call('TIME') repeat local t = redis.call('TIME') "
        "until (t[1] - t0[1]) * 1000000 + (t[2] - t0[2]) > 10000 return 1", 0))
    await asyncio.sleep(0.001)
    asyncio.get_running_loop().call_later(0.005, time.sleep, 0.08)
    d = await store.acquire([b], [], rid())
    assert d.allowed and d.states[0].remaining == 8
    await busy
    await blocker.aclose()
    await store.close()


async def failure_name(store, b) -> str:
    try:
        await store.acquire([b], [], rid())
    except Exception as exc:  # noqa: BLE001 - the test reports which
        return type(exc).__name__
    return "answered"


async def test_a_failed_call_leaves_no_reference_cycle():
    """A store failure reaches every waiter of the batch; freeing it must not need the garbage collector (a cycle
    through its traceback would keep each waiter's stack alive until a collection, at the worst moment: Redis is
    failing and every request is failing over)."""
    store = RedisStore.from_url(f"redis://127.0.0.1:{free_port()}", timeout_s=1.0)  # nothing listens there
    b = bucket(10)
    with left_for_the_collector() as garbage:
        outcomes = await asyncio.gather(*(failure_name(store, b) for _ in range(3)))
    leaked = sorted(o.f_code.co_name for o in garbage
                    if isinstance(o, types.FrameType) and o.f_code.co_filename.endswith(("_redis.py", "state.py")))
    await store.close()
    assert outcomes == ["StateUnavailableError"] * 3
    assert leaked == []


# --------------------------------------------------------------------------------------------------------------------
# Every operation is idempotent or fenced by its decision's id (lua/quota.lua; the memory store mirrors it).


async def test_an_acquire_run_again_after_its_grant_charges_nothing_twice(store):
    """As after a lost connection: the same decision sent again answers granted, and takes nothing more."""
    b, l1 = bucket(10), lease(1)
    holder = rid()
    assert (await store.acquire([b], [l1], holder)).allowed
    again = await store.acquire([b], [l1], holder)
    assert again.allowed and again.states[0].remaining == 9
    assert (await store.acquire([b], [], rid())).states[0].remaining == 8  # one charge for the two runs
    await store.settle([], [], [l1], holder)
    assert (await store.acquire([], [l1], rid())).allowed  # and one permit, released by one settlement


async def test_a_void_refunds_and_releases_a_granted_decision(store):
    b, l1 = bucket(10, cost=3), lease(1)
    holder = rid()
    assert (await store.acquire([b], [l1], holder)).allowed
    await store.void([b], [l1], holder)
    d = await store.acquire([b], [l1], rid())
    assert d.allowed and d.states[0].remaining == 7  # 10 - this one's 3: the voided 3 came back


async def test_a_void_before_its_acquire_makes_the_acquire_take_nothing(store):
    """The caller gave up before its acquire reached the store (it waited in a paused Redis): the void lands first,
    and the acquire, when it runs, is refused as voided and takes nothing."""
    b, l1 = bucket(10), lease(1)
    late = rid()
    await store.void([b], [l1], late)
    d = await store.acquire([b], [l1], late)
    assert not d.allowed and d.voided
    other = await store.acquire([b], [l1], rid())
    assert other.allowed and other.states[0].remaining == 9


async def test_a_settlement_applies_once(store):
    """A settlement sent again (it timed out, yet ran) refunds once."""
    b = bucket(100, cost=80)
    holder = rid()
    assert (await store.acquire([b], [], holder)).allowed
    await store.settle([b], [-50], [], holder)
    await store.settle([b], [-50], [], holder)
    assert (await store.acquire([bucket(100, cost=0, key=b.key)], [], rid())).states[0].remaining == 70


async def test_a_voided_decision_is_not_settled_and_a_settled_one_not_voided(store):
    b, l1 = bucket(100, cost=10), lease(2)
    voided, settled = rid(), rid()
    assert (await store.acquire([b], [l1], voided)).allowed
    assert (await store.acquire([b], [l1], settled)).allowed
    await store.void([b], [l1], voided)
    await store.settle([b], [-10], [l1], voided)  # would refund a second time
    await store.settle([b], [+5], [l1], settled)
    await store.void([b], [l1], settled)  # would refund the settled charge
    d = await store.acquire([bucket(100, cost=0, key=b.key)], [], rid())
    assert d.states[0].remaining == 100 - 10 - 5


async def test_a_renewal_takes_a_lost_permit_again_but_not_a_settled_one(store):
    held, done = lease(1, ttl_s=0.2), lease(1, ttl_s=0.2)
    holder, finished = rid(), rid()
    assert (await store.acquire([], [held], holder)).allowed
    assert (await store.acquire([], [done], finished)).allowed
    await store.settle([], [], [done], finished)
    await asyncio.sleep(0.3)  # the holder's permit expired (as if Redis had lost it)
    await store.renew([held], holder)
    await store.renew([done], finished)  # a renewal that comes after the settlement
    assert not (await store.acquire([], [held], rid())).allowed, "the renewal did not take the permit again"
    assert (await store.acquire([], [done], rid())).allowed, "a renewal took a settled permit again"
