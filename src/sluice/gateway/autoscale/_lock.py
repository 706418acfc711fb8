"""One decision per model per cooldown across every gateway sharing the state store.

Each gateway samples and weighs on its own; before acting it takes the model's lock for the direction it wants.
Two keys per model, ``sluice:autoscale:{model}:up`` and ``...:down``, both set by every decision: while one
exists, no gateway may decide in that direction. A decision sets both for ``hold_s`` (long enough to cover the
replicas starting), and when it settles (reached, failed or given up) its gateway sets them again to the up and
down cooldowns, counted from then. One Lua script checks and sets, so two gateways cannot both win. The hash
tag keeps both keys on one Redis Cluster slot.

On ``memory://`` state there is one process: ``LocalLock`` grants every request (the autoscaler's own cooldowns
apply as they do with Redis).
"""

from __future__ import annotations

import logging
from typing import Protocol

from sluice.errors import StateUnavailableError
from sluice.gateway.autoscale._policy import Direction
from sluice.state import Client, MemoryState, RedisState, State

log = logging.getLogger("sluice.autoscale")

ACQUIRE = """
local wanted = ARGV[1] == 'up' and KEYS[1] or KEYS[2]
if redis.call('EXISTS', wanted) == 1 then return 0 end
redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[2])
redis.call('SET', KEYS[2], ARGV[3], 'PX', ARGV[2])
return 1
"""
SETTLED = """
redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[1])
redis.call('SET', KEYS[2], ARGV[3], 'PX', ARGV[2])
return 1
"""


class DecisionLock(Protocol):
    async def acquire(self, model: str, direction: Direction, hold_s: float) -> bool:
        """True when this gateway may decide now; False when another decided within its cooldown (or the
        store cannot say: then nobody should)."""
        ...

    async def settled(self, model: str, up_cooldown_s: float, down_cooldown_s: float) -> None:
        """The decision is over: the cooldowns start now, for every gateway."""
        ...


class LocalLock:
    async def acquire(self, model: str, direction: Direction, hold_s: float) -> bool:
        return True

    async def settled(self, model: str, up_cooldown_s: float, down_cooldown_s: float) -> None:
        return None


class RedisLock:
    def __init__(self, state: RedisState, owner: str) -> None:
        self._state = state
        self._owner = owner
        self._outages_logged = -1

    async def acquire(self, model: str, direction: Direction, hold_s: float) -> bool:
        up, down = _keys(model)

        async def call(client: Client) -> object:
            return await client.eval(ACQUIRE, 2, up, down, direction, _ms(hold_s), self._owner)

        try:
            won = await self._state.run(call, "autoscaler lock", idempotent=False)
        except StateUnavailableError:
            if self._outages_logged != self._state.outages:
                self._outages_logged = self._state.outages
                log.warning("autoscaler: the state store is unavailable: no scaling decision until it answers")
            return False
        return bool(won)

    async def settled(self, model: str, up_cooldown_s: float, down_cooldown_s: float) -> None:
        up, down = _keys(model)

        async def call(client: Client) -> object:
            return await client.eval(SETTLED, 2, up, down, _ms(up_cooldown_s), _ms(down_cooldown_s), self._owner)

        try:
            await self._state.run(call, "autoscaler cooldown")
        except StateUnavailableError:
            log.warning("autoscaler: model %s: could not record the cooldown in the state store (the keys expire "
                        "on their own)", model)


def lock_for(state: State, owner: str) -> DecisionLock:
    return LocalLock() if isinstance(state, MemoryState) else RedisLock(state, owner)


def _keys(model: str) -> tuple[str, str]:
    return f"sluice:autoscale:{{{model}}}:up", f"sluice:autoscale:{{{model}}}:down"


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))
