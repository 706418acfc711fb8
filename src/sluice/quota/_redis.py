"""The Redis store: every operation is the Lua script lua/quota.lua, run with EVALSHA (reloaded on NOSCRIPT),
its operations sent as one JSON argument (see ``_wire``).

At most ``MAX_CALLS_IN_FLIGHT`` script calls are on the wire at once; the operations issued meanwhile are sent
together in the next call (at most ``MAX_BATCH`` a call): under load one round trip carries many decisions (each
still atomic and all-or-nothing), which keeps a shared store cheap per request; at low load a decision costs one
round trip (it never waits for a batch when nothing else is in flight).

A call is written at once on the store's own connection (``_pipe``), and its reply resolves its callers in the
connection's read, where the next batch is written too: no task, stream reader or state-layer frame per call.
Without a connection (the first call, after a loss, Redis down, a cluster), a batch goes through the process's one
state layer (``sluice.state``: the deadline, the retry on a fresh connection, the translation of errors and Redis'
health are all there), which also opens the connection; the pipe's failures are judged as the state layer would:
a timeout marks Redis down, an error Redis answered fails the call, a lost connection sends the batch again once.

Every operation is idempotent or fenced by its decision's marker (lua/quota.lua), which is what makes failures
safe: a batch whose connection broke is sent again once on a fresh connection; a decision whose caller will never
act on it (the call timed out or failed, or the caller left) is voided, which refunds and releases it if it was
granted and refuses it if it runs later; a settlement that did not land is kept. Both are retried by the store's
give-back queue until they land (``_give_back``), and a replay of either never applies twice.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import hiredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import Connection
from redis.exceptions import AskError, NoScriptError, ResponseError, TryAgainError

from sluice.clock import Clock, MonotonicClock
from sluice.config import QuotaSettings
from sluice.errors import StateUnavailableError
from sluice.quota import _wire
from sluice.quota._give_back import GiveBack, GiveBackQueue
from sluice.quota._model import Bucket, BucketState, Decision, Lease, Stretch
from sluice.quota._pipe import Pipe
from sluice.quota._store import until_landed
from sluice.state import Client, RedisState

_US = 1_000_000
# Calls (one or two script operations each) per script call: a call must stay well inside the store timeout even
# under a burst (a burst of thousands in one call would time out and push every gateway into fail-open at once).
MAX_BATCH = 16
# Two calls overlap: a decision waits for at most one call ahead of its own. At 64 connections, everything on
# (docs/benchmarks.md), the quota step's time p50 / p99: 2.0 / 6.3 ms with 2; 2.8-3.3 / 8.2-8.6 with 1 (9 operations
# a call instead of 5.5: ~4% less Redis CPU a request); 1.5-1.8 / 5.2-5.4 with 4, for ~15% more Redis CPU a
# request and ~3% more of the gateway's (each call is a write, a read and a parse), and fewer requests a second.
MAX_CALLS_IN_FLIGHT = 2
DEFAULT_MARKER_TTL_S = 60.0


def load_script() -> str:
    return resources.files("sluice.quota").joinpath("lua/quota.lua").read_text()


@dataclass(slots=True)
class _Pending:
    keys: list[str]
    ops: list[list[Any]]  # script operations (``_wire``), one reply each; the last one answers
    future: asyncio.Future[Any] | None  # None: nobody waits for the reply (a settlement: ``landed`` hears of it)
    lost: Callable[[Any], None] | None = field(default=None)  # the caller will not act on this reply (None: none)
    landed: Callable[[], None] = field(default=lambda: None)  # a settlement was applied, or kept to apply later


class RedisStore:
    """``marker_ttl_s``: how long a decision's marker lives; voids are retried for as long (their leases have
    expired by then when it is ``quota.lease_ttl_s``), so a marker outlives every operation that reads it."""

    def __init__(self, state: RedisState, clock: Clock, *, marker_ttl_s: float = DEFAULT_MARKER_TTL_S,
                 key_prefix: str = "{sluice}", owns_state: bool = False) -> None:
        self.state = state
        self._clock = clock
        self._source = load_script()
        self._sha = hashlib.sha1(self._source.encode()).hexdigest()
        self.marker_ttl_s = marker_ttl_s
        self._marker_ttl_ms = max(1, round(marker_ttl_s * 1000))
        self._prefix = key_prefix
        self._owns_state = owns_state
        self._queue: list[_Pending] = []
        self._calls_in_flight = 0
        self._pipe: Pipe | None = None  # the store's own connection (``_pipe``), once a call has opened it
        self._opening = asyncio.Lock()
        self._closed = False
        self._sending: set[asyncio.Task[None]] = set()  # the batches sent through the state layer
        self.give_back = GiveBackQueue(self._deliver, state, clock)

    @classmethod
    def from_url(cls, url: str, *, timeout_s: float | None = None, retry_s: float | None = None,
                 clock: Clock | None = None) -> RedisStore:
        """A store with a state layer (a Redis client) of its own: for tools and tests; the gateway shares one."""
        clock = clock or MonotonicClock()
        defaults = QuotaSettings.model_validate({})
        state = RedisState.from_url(url, clock, timeout_s=timeout_s or defaults.store_timeout_s,
                                    retry_s=retry_s or defaults.store_retry_s)
        return cls(state, clock, owns_state=True)

    async def acquire(self, buckets: Sequence[Bucket], leases: Sequence[Lease], lease_id: str,
                      stretch: Stretch | None = None) -> Decision:
        keys = self._keys(buckets, leases, lease_id)
        marker = keys[-1]

        def lost(reply: Any) -> None:  # may have been granted, and nobody will settle it: void it
            if reply is None or reply[0] == _wire.GRANTED:
                self._give_back(keys, [_wire.void(buckets, leases, lease_id, marker, self._marker_ttl_ms)],
                                self._clock.now() + self.marker_ttl_s)

        reply = await self._call(
            keys, [_wire.acquire(buckets, leases, lease_id, marker, self._marker_ttl_ms, stretch)], lost=lost)
        granted, refused_bucket, refused_lease, retry_us, states = reply[:5]
        # Integers come as integers; a retry may be b'inf' (never). Positional: a decision is made per request.
        return Decision(granted == _wire.GRANTED,
                        [BucketState(r, reset / _US, float(retry) / _US) for r, reset, retry in states],
                        None if refused_bucket < 0 else refused_bucket, None if refused_lease < 0 else refused_lease,
                        float(retry_us) / _US, granted == _wire.VOIDED, reply[5] if len(reply) > 5 else None)

    def settle_soon(self, buckets: Sequence[Bucket], deltas: Sequence[int], leases: Sequence[Lease],
                    lease_id: str, landed: Callable[[], None]) -> None:
        """Sent with the next script call (nobody waits for it: no task, no future of its own), or kept and applied
        once Redis is back (never twice: the marker fences replays); ``landed`` hears when it is either."""
        keys = self._keys(buckets, leases, lease_id)
        ops = [_wire.settle(buckets, deltas, leases, lease_id, keys[-1], self._marker_ttl_ms)]
        if not self.state.available:
            self._give_back(keys, ops, None)
            landed()
            return
        self._queue.append(_Pending(keys, ops, None, landed=landed))
        self._kick()

    async def settle(self, buckets: Sequence[Bucket], deltas: Sequence[int], leases: Sequence[Lease],
                     lease_id: str) -> None:
        await until_landed(lambda landed: self.settle_soon(buckets, deltas, leases, lease_id, landed))

    async def void(self, buckets: Sequence[Bucket], leases: Sequence[Lease], lease_id: str) -> None:
        keys = self._keys(buckets, leases, lease_id)
        ops = [_wire.void(buckets, leases, lease_id, keys[-1], self._marker_ttl_ms)]
        try:
            await self._call(keys, ops)
        except StateUnavailableError:
            self._give_back(keys, ops, self._clock.now() + self.marker_ttl_s)

    async def renew(self, leases: Sequence[Lease], lease_id: str) -> None:
        """Raises ``StateUnavailableError`` when Redis is unavailable (the lease may then expire)."""
        keys = self._keys((), leases, lease_id)
        await self._call(keys, [_wire.renew(leases, lease_id, keys[-1])])

    async def flush(self) -> None:
        """Wait until every operation queued so far has had its script call (shutdown: no settlement is lost)."""
        while self._queue or self._calls_in_flight:
            if self._sending:
                await asyncio.wait(list(self._sending))
            else:  # written on the pipe: answered (or timed out) in its read
                await asyncio.sleep(0.001)

    async def close(self) -> None:
        await self.flush()
        await self.give_back.close()
        self._closed = True  # what the pipe still carries (a give-back cut short) is not sent again
        if self._pipe is not None:
            self._pipe.close()
        if self._owns_state:
            await self.state.close()

    def _keys(self, buckets: Sequence[Bucket], leases: Sequence[Lease], lease_id: str) -> list[str]:
        """The keys of one decision's operation, its marker last."""
        keys = [b.key for b in buckets]
        keys += [lease.key for lease in leases]
        keys.append(_wire.marker_key(keys, lease_id, self._prefix))
        return keys

    def _give_back(self, keys: list[str], ops: list[list[Any]], give_up_at: float | None) -> None:
        self.give_back.put(GiveBack(keys, ops, give_up_at))

    async def _deliver(self, item: GiveBack) -> None:
        await self._call(item.keys, item.ops)

    async def _call(self, keys: list[str], ops: list[list[Any]], *, lost: Callable[[Any], None] | None = None) -> Any:
        if not self.state.available:
            raise self.state.refusal("quota")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending(keys, ops, future, lost))
        self._kick()
        try:
            return await future
        except asyncio.CancelledError:
            # The reply came, but this task was cancelled before it could resume: nobody will use the answer.
            if lost is not None and future.done() and not future.cancelled() and future.exception() is None:
                lost(future.result())
            raise
        finally:
            del future  # a failure raised here keeps this frame in its traceback: the frame must not keep the failure

    def _kick(self) -> None:
        """Send what is queued, as far as calls may be in flight: written at once on the store's connection, or, when
        it has none (not yet, lost, a cluster, Redis down), through the state layer in a task."""
        while self._queue and self._calls_in_flight < MAX_CALLS_IN_FLIGHT:
            batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
            self._calls_in_flight += 1
            pipe = self._pipe
            if pipe is not None and not pipe.closed and self.state.available:
                self._write(pipe, batch)
            else:
                self._start(self._send(batch))

    def _write(self, pipe: Pipe, batch: list[_Pending]) -> None:
        """The batch's script call on the pipe; its reply is taken in the pipe's read (``_answered``). NOSCRIPT (a
        restarted or flushed Redis) loads the script and sends the call again, once."""
        wire_keys, args = _wire.encode((o for p in batch for o in p.ops), (k for p in batch for k in p.keys))
        command = self._evalsha_command(wire_keys, args)

        def answered(reply: Any) -> None:
            if _no_script(reply) and not pipe.closed:
                pipe.send(_resp("SCRIPT", "LOAD", self._source), _ignore)
                pipe.send(command, lambda again: self._answered(batch, again))
                return
            self._answered(batch, reply)

        pipe.send(command, answered)

    def _answered(self, batch: list[_Pending], reply: Any) -> None:
        if isinstance(reply, ConnectionError) and not self._closed:  # it broke: sent again, once, on a fresh one
            self._start(self._send(batch, resent=True))
            return
        self._next_call()  # the next call goes out before this one's waiters wake: Redis works on it while they run
        if isinstance(reply, ConnectionError):  # the store closed under it
            self._failed(batch, self.state.refusal("quota"))
            return
        if isinstance(reply, (TimeoutError, hiredis.ReplyError)):
            cause = ResponseError(str(reply)) if isinstance(reply, hiredis.ReplyError) else reply
            failure = self.state.failed(cause, "quota")  # a timeout marks Redis down; an error it answered does not
            failure.__cause__ = cause
            self._failed(batch, failure)
            return
        self._resolve(batch, reply)

    def _start(self, sending: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(sending)
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send(self, batch: list[_Pending], *, resent: bool = False) -> None:
        """The batch through the state layer (its deadline, retry and translation of errors); ``resent``: its call
        was written once already, and the connection broke (it is not retried again)."""
        try:
            replies = await self._script((o for p in batch for o in p.ops), (k for p in batch for k in p.keys),
                                         retry=not resent)
        except StateUnavailableError as exc:
            self._next_call()
            exc.with_traceback(None)  # each waiter raises it in its own frame; this frame holds the batch holding it
            self._failed(batch, exc)
            return
        except BaseException:
            self._next_call()
            raise
        self._next_call()
        self._resolve(batch, replies)

    def _failed(self, batch: list[_Pending], failure: StateUnavailableError) -> None:
        for pending in batch:
            if pending.future is None:  # a settlement: kept, and applied once Redis is back
                self._give_back(pending.keys, pending.ops, None)
                pending.landed()
                continue
            if pending.lost is not None:  # it may have run: nobody will act on it
                pending.lost(None)
            if not pending.future.done():
                pending.future.set_exception(failure)

    @staticmethod
    def _resolve(batch: list[_Pending], replies: list[Any]) -> None:
        at = 0
        for pending in batch:
            at += len(pending.ops)
            if pending.future is None:
                pending.landed()
                continue
            reply = replies[at - 1]
            if not pending.future.done():
                pending.future.set_result(reply)
            elif pending.lost is not None:
                pending.lost(reply)

    async def _script(self, ops: Iterable[list[Any]], keys: Iterable[str], *, retry: bool = True) -> Any:
        """One script call carrying ``ops`` (one reply each), through the state layer (deadline, retry, errors)."""
        wire_keys, args = _wire.encode(ops, keys)
        return await self.state.run(lambda client: self._evalsha(client, wire_keys, args), "quota", idempotent=retry)

    async def _evalsha(self, client: Client, keys: list[str], args: list[bytes]) -> Any:
        """EVALSHA on the store's own pipe (opened by the client's pool, with its settings), loading the script on
        NOSCRIPT. Not through redis-py's per-command path: its retries, hooks, pool checkout and stream reader
        cost more CPU than the decisions a call carries. An interrupted call ends the pipe (a reply may still be
        on its way): the state layer's retry, and the next calls, open a fresh one."""
        if isinstance(client, RedisCluster):
            return await self._evalsha_on_cluster(client, keys, args)
        pipe, reopened = self._pipe, False
        if pipe is None or pipe.closed:
            async with self._opening:
                pipe = self._pipe
                if pipe is None or pipe.closed:
                    reopened = pipe is not None and pipe.lost
                    pipe = self._pipe = await Pipe.open(client, self.state.timeout_s)
        command = self._evalsha_command(keys, args)
        try:
            for attempt in range(2):
                try:
                    reply = await pipe.call(command)
                except hiredis.ReplyError as exc:
                    if attempt or not _no_script(exc):
                        raise ResponseError(str(exc)) from None
                    await pipe.call(_resp("SCRIPT", "LOAD", self._source))
                    continue
                if reopened:  # Redis had ended the last connection, and answers on a new one: it may have restarted
                    self.state.reconnected()
                return reply
        except (OSError, asyncio.CancelledError):
            pipe.close()
            raise
        raise AssertionError("unreachable")

    def _evalsha_command(self, keys: list[str], args: list[bytes]) -> bytes:
        return _resp("EVALSHA", self._sha, str(len(keys)), *keys, *args)

    async def _evalsha_on_cluster(self, client: RedisCluster, keys: list[str], args: list[bytes]) -> Any:
        """On a cluster: straight on a connection to the master of the keys' one slot (they share a hash tag), as
        the client's slot map says. A master that never ran the script (a promoted replica: scripts are not
        replicated) answers NOSCRIPT, and the script is loaded on it. No slot map yet (the client connects
        lazily), or a slot that moved (MOVED/ASK: the EVALSHA did not run): through the client, which follows."""
        owners = client.nodes_manager.slots_cache.get(client.keyslot(keys[0]))
        if owners:
            node = owners[0]
            conn = node.acquire_connection()
            try:
                await node.disconnect_if_needed(conn)
                return await self._evalsha_on(conn, keys, args)
            except (AskError, TryAgainError):  # MOVED is an AskError
                pass
            finally:
                node.release(conn)
        for attempt in range(2):
            try:
                return await client.execute_command("EVALSHA", self._sha, len(keys), *keys, *args)
            except NoScriptError:
                if attempt:
                    raise
                owner = client.get_node_from_key(keys[0])
                await client.execute_command("SCRIPT LOAD", self._source, target_nodes=owner)
        raise AssertionError("unreachable")

    async def _evalsha_on(self, conn: Connection, keys: list[str], args: list[bytes]) -> Any:
        """EVALSHA on a redis-py connection (a cluster node's)."""
        for attempt in range(2):
            await conn.send_packed_command(self._evalsha_command(keys, args))
            try:
                return await conn.read_response()
            except NoScriptError:
                if attempt:
                    raise
                await conn.send_command("SCRIPT", "LOAD", self._source)
                await conn.read_response()
        raise AssertionError("unreachable")

    def _next_call(self) -> None:
        self._calls_in_flight -= 1
        self._kick()


def _no_script(reply: Any) -> bool:
    """Whether Redis answered NOSCRIPT (the script is not loaded: a restarted or flushed Redis)."""
    return isinstance(reply, hiredis.ReplyError) and str(reply).startswith("NOSCRIPT")


def _ignore(reply: Any) -> None:
    return None


def _resp(*args: str | bytes) -> bytes:
    """One command in Redis' protocol (RESP): an array of bulk strings (packed by hiredis, in C)."""
    packed: bytes = hiredis.pack_command(args)  # type: ignore[arg-type]  # its stub takes a tuple of one
    return packed
