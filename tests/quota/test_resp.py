"""The Redis store packs its EVALSHA itself: byte for byte what redis-py would send."""

from __future__ import annotations

from redis.asyncio.connection import Connection

from sluice.quota._redis import _resp


def test_resp_packing_matches_redis_py() -> None:
    args = ("EVALSHA", "0123abcd", "3", "{sluice}:tier.pro:key=k1:*:requests", "{sluice}:ünïcode", "",
            b'[["A","r1",[["{sluice}:k",60000000.0,10,1]],[]]]')
    assert _resp(*args) == b"".join(Connection().pack_command(*args))
