"""Decision markers in lua/quota.lua, on a fake clock (the Lua harness): which operations write them, what each
does when it finds one, and when they expire. The same semantics run against a real Redis and the memory store
in tests/contract/test_quota_stores.py."""

from __future__ import annotations

from sluice.clock import FakeClock
from sluice.quota import Bucket, Lease, LimitInfo, _wire
from tests.quota.lua_harness import LuaRedis

TTL_MS = 60_000
INFO = LimitInfo("tokens", "t", 10, 36_000.0)


def bucket(cost: int) -> Bucket:
    return Bucket("{t}:b", 3600.0, 10, cost, INFO)  # one unit an hour: nothing drips back within a test


LEASE = Lease("{t}:l", 1, 60.0, "t")


def run(redis: LuaRedis, *ops: list) -> list:
    keys = ["{t}:b", "{t}:l"] + [op[2] for op in ops]
    return redis.run(list(ops), keys)


def acquire(decision: str, cost: int = 3, leases: tuple[Lease, ...] = (LEASE,)) -> list:
    return _wire.acquire([bucket(cost)], list(leases), decision, _wire.marker_key(["{t}:b"], decision), TTL_MS)


def void(decision: str, cost: int = 3) -> list:
    return _wire.void([bucket(cost)], [LEASE], decision, _wire.marker_key(["{t}:b"], decision), TTL_MS)


def remaining(redis: LuaRedis) -> int:
    (reply,) = run(redis, acquire("peek", cost=0, leases=()))
    return int(reply[4][0][0])


def test_a_grant_is_marked_and_a_peek_that_holds_nothing_is_not() -> None:
    redis = LuaRedis(FakeClock())
    run(redis, acquire("d1"))
    assert redis.strings[_wire.marker_key(["{t}:b"], "d1")] == "granted"
    assert remaining(redis) == 7
    assert _wire.marker_key(["{t}:b"], "peek") not in redis.strings  # the admin API's peek, run again and again


def test_a_void_and_its_acquire_in_either_order_leave_nothing_taken() -> None:
    redis = LuaRedis(FakeClock())
    granted_then_voided = run(redis, acquire("d1"), void("d1"))
    assert granted_then_voided[0][0] == _wire.GRANTED and granted_then_voided[1] == [1]
    voided_then_late = run(redis, void("d2"), acquire("d2"))
    assert voided_then_late[1][0] == _wire.VOIDED
    assert remaining(redis) == 10
    assert redis.zsets.get("{t}:l", {}) == {}
    assert run(redis, void("d1")) == [[0]]  # a void sent again finds the decision void: nothing more


def test_a_marker_lives_its_ttl_then_the_id_is_free_again() -> None:
    clock = FakeClock()
    redis = LuaRedis(clock)
    run(redis, acquire("d1", leases=()))
    assert run(redis, acquire("d1", leases=()))[0][0] == _wire.GRANTED and remaining(redis) == 7  # a retry
    clock.advance(TTL_MS / 1000 + 1)
    run(redis, acquire("d1", leases=()))  # past its marker's life, the same id is a new decision
    assert remaining(redis) == 4


def test_a_marker_lives_in_its_decisions_hash_slot() -> None:
    assert _wire.marker_key(["{acme}:tier.pro:requests", "{acme}:x"], "d1") == "{acme}:decision:d1"
    assert _wire.marker_key(["plain-key"], "d1") == "{sluice}:decision:d1"
