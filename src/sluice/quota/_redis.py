"""The Redis store: every operation is the Lua script lua/quota.lua, run with EVALSHA (reloaded on NOSCRIPT),
its operations sent as one JSON argument (see ``_wire``).

At most ``MAX_CALLS_IN_FLIGHT`` script calls are on the wire at once; the operations issued meanwhile are sent
together in the next call (at most ``MAX_BATCH`` a call): under load one round trip carries many decisions (each
still atomic and all-or-nothing), which keeps a shared store cheap per request; at low load a decision costs one
round trip. Each call is bounded by ``timeout_s`` (so a waiter waits at most for a call ahead of its own and for
its own), counted as the loop sees it but not while the loop itself was too busy to read the answer
(``_deadline``). A decision whose caller stopped waiting (its client left, or
the call timed out) gives back what it took: a granted decision is refunded and released once its reply arrives
(or, when it had arrived but its caller was cancelled before it could resume, then); a timed-out one releases
its leases a second later (its charges stay: over-charging is the safe side).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError

from sluice.quota import _wire
from sluice.quota._deadline import StoreDeadline
from sluice.quota._model import Bucket, BucketState, Decision, Lease

log = logging.getLogger("sluice.quota")

_US = 1_000_000
# Calls (one or two script operations each) per script call: a call must stay well inside the store timeout even
# under a burst (a burst of thousands in one call would time out and push every gateway into fail-open at once).
MAX_BATCH = 16
# Several calls overlap, each small: one large call at a time wakes its waiters in one wave, and the gateway then
# alternates between a burst of work and waiting (measured: ~9% of its CPU idle at 64 connections).
MAX_CALLS_IN_FLIGHT = 4
RELEASE_AFTER_TIMEOUT_S = 1.0


def load_script() -> str:
    return resources.files("sluice.quota").joinpath("lua/quota.lua").read_text()


@dataclass(slots=True)
class _Pending:
    keys: list[str]
    ops: list[list[Any]]  # script operations (``_wire``), one reply each; the last one answers
    future: asyncio.Future[Any]
    abandoned: Callable[[Any], None] | None = field(default=None)  # reply handler when nobody waits any more
    timed_out: Callable[[], None] | None = field(default=None)


class RedisStore:
    def __init__(self, client: aioredis.Redis, *, timeout_s: float = 0.02) -> None:
        self._client = client
        self._source = load_script()
        self._sha = hashlib.sha1(self._source.encode()).hexdigest()
        self._timeout_s = timeout_s
        self._queue: list[_Pending] = []
        self._calls_in_flight = 0

    @classmethod
    def from_url(cls, url: str, *, timeout_s: float = 0.02) -> RedisStore:
        return cls(aioredis.from_url(url, decode_responses=False, health_check_interval=0), timeout_s=timeout_s)

    async def acquire(self, buckets: Sequence[Bucket], leases: Sequence[Lease], lease_id: str) -> Decision:
        keys = [b.key for b in buckets] + [lease.key for lease in leases]

        def give_back(reply: Any) -> None:
            if reply[0] == 1:
                self._send_later(keys, _wire.settle(buckets, [-b.cost for b in buckets], leases, lease_id))

        def release_leases() -> None:
            if leases:  # later: the timed-out call may still run after a release sent now, on another connection
                asyncio.get_running_loop().call_later(
                    RELEASE_AFTER_TIMEOUT_S, self._send_later, keys, [_wire.release(leases, lease_id)])

        allowed, refused_bucket, refused_lease, retry_us, states = await self._call(
            keys, [_wire.acquire(buckets, leases, lease_id)], abandoned=give_back, timed_out=release_leases)
        return Decision(
            allowed=bool(allowed),
            states=[BucketState(int(r), float(reset) / _US, float(retry) / _US) for r, reset, retry in states],
            refused_bucket=None if refused_bucket < 0 else int(refused_bucket),
            refused_lease=None if refused_lease < 0 else int(refused_lease),
            retry_after_s=float(retry_us) / _US,
        )

    async def settle(self, buckets: Sequence[Bucket], deltas: Sequence[int], leases: Sequence[Lease],
                     lease_id: str) -> None:
        await self._call([b.key for b in buckets] + [lease.key for lease in leases],
                         _wire.settle(buckets, deltas, leases, lease_id))

    async def renew(self, leases: Sequence[Lease], lease_id: str) -> None:
        await self._call([lease.key for lease in leases], [_wire.renew(leases, lease_id)])

    async def close(self) -> None:
        await self._client.aclose()

    async def _call(self, keys: list[str], ops: list[list[Any]], *, abandoned: Callable[[Any], None] | None = None,
                    timed_out: Callable[[], None] | None = None) -> Any:
        if not ops:
            return None
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending(keys, ops, future, abandoned, timed_out))
        self._kick()
        try:
            return await future
        except asyncio.CancelledError:
            # The reply came, but this task was cancelled before it could resume: nobody will use the answer.
            if abandoned is not None and future.done() and not future.cancelled() and future.exception() is None:
                abandoned(future.result())
            raise
        finally:
            del future  # a failure raised here keeps this frame in its traceback: the frame must not keep the failure

    def _send_later(self, keys: list[str], ops: list[list[Any]]) -> None:
        """Queue operations nobody waits for (a give-back); their failure is logged, not raised."""
        if not ops:
            return
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        future.add_done_callback(_log_failure)
        self._queue.append(_Pending(keys, ops, future))
        self._kick()

    def _kick(self) -> None:
        while self._queue and self._calls_in_flight < MAX_CALLS_IN_FLIGHT:
            batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
            self._calls_in_flight += 1
            asyncio.get_running_loop().create_task(self._send(batch))

    async def _send(self, batch: list[_Pending]) -> None:
        try:
            keys, args = _wire.encode((o for p in batch for o in p.ops), (k for p in batch for k in p.keys))
            async with StoreDeadline(self._timeout_s):  # not wait_for: its extra task would send a loop turn later
                replies = await self._evalsha(keys, args)
        except Exception as exc:  # noqa: BLE001 - every waiter learns of the failure
            self._next_call()
            timeout = isinstance(exc, asyncio.TimeoutError)
            exc.with_traceback(None)  # each waiter raises it in its own frame; this frame holds the batch holding it
            for pending in batch:
                if timeout and pending.timed_out is not None:
                    pending.timed_out()
                if not pending.future.done():
                    pending.future.set_exception(exc)
            return
        except BaseException:
            self._next_call()
            raise
        # The next call goes out before this one's waiters wake: Redis works on it while they run.
        self._next_call()
        at = 0
        for pending in batch:
            at += len(pending.ops)
            reply = replies[at - 1]
            if not pending.future.done():
                pending.future.set_result(reply)
            elif pending.abandoned is not None:
                pending.abandoned(reply)

    async def _evalsha(self, keys: list[str], args: list[bytes]) -> Any:
        """EVALSHA on a pooled connection, loading the script on NOSCRIPT (a restarted or flushed Redis). Straight
        on the connection: redis-py's per-command path (retries, metrics hooks) cost ~180 µs of CPU per call here,
        and its argument packing (an encoder call and type checks per argument) ~8% of a decision's client CPU.
        An interrupted call drops its connection (redis-py does, on any error while sending or reading)."""
        pool = self._client.connection_pool
        conn = await pool.get_connection()
        try:
            for attempt in range(2):
                await conn.send_packed_command(_resp("EVALSHA", self._sha, str(len(keys)), *keys, *args))
                try:
                    return await conn.read_response()
                except NoScriptError:
                    if attempt:
                        raise
                    await conn.send_command("SCRIPT", "LOAD", self._source)
                    await conn.read_response()
        finally:
            await pool.release(conn)

    def _next_call(self) -> None:
        self._calls_in_flight -= 1
        self._kick()


def _resp(*args: str | bytes) -> bytes:
    """One command in Redis' protocol (RESP): an array of bulk strings."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg.encode() if isinstance(arg, str) else arg
        out += (b"$%d\r\n" % len(data), data, b"\r\n")
    return b"".join(out)


def _log_failure(future: asyncio.Future[Any]) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.warning("could not give back an abandoned quota decision: %s", future.exception())
