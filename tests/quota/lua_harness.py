"""Runs lua/quota.lua in a Lua runtime (lupa) against a tiny in-process stand-in for Redis, on a fake clock.

It exists for one purpose: checking the script's arithmetic against the reference model with time under the
test's control (a real Redis reads its own clock). The real twin, a real redis-server, runs the same script in
tests/contract.
"""

from __future__ import annotations

import json
from typing import Any

import lupa

from sluice.clock import FakeClock
from sluice.quota import _wire
from sluice.quota._redis import load_script


class LuaRedis:
    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.strings: dict[str, str] = {}
        self.expires: dict[str, float] = {}  # string key -> wall-clock second it expires at (SET ... PX)
        self.zsets: dict[str, dict[str, float]] = {}
        self.lua = lupa.LuaRuntime(unpack_returned_tuples=True)
        self.lua.execute("redis = {}")
        self.lua.globals().redis.call = self._call
        self.lua.execute("cjson = {}")
        self.lua.globals().cjson.decode = lambda text: self.lua.table_from(json.loads(text), recursive=True)
        self.script = self.lua.eval("function(KEYS, ARGV) " + load_script() + " end")

    def run(self, ops: list[list[Any]], keys: list[str]) -> Any:
        """Run operations built by ``sluice.quota._wire``, sent the way RedisStore sends them."""
        keys, args = _wire.encode(ops, keys)
        return _to_python(self.script(self.lua.table_from(keys), self.lua.table_from(args)))

    def _call(self, command: str, *args: Any) -> Any:
        cmd = command.upper()
        if cmd == "TIME":
            now_us = round(self.clock.wall() * 1_000_000)
            return self.lua.table_from([str(now_us // 1_000_000), str(now_us % 1_000_000)])
        if cmd == "GET":
            if self.expires.get(args[0], float("inf")) <= self.clock.wall():
                self.strings.pop(args[0], None)
            return self.strings.get(args[0], False)
        if cmd == "SET":
            self.strings[args[0]] = str(args[1])
            self.expires.pop(args[0], None)
            if len(args) == 4 and str(args[2]).upper() == "PX":
                self.expires[args[0]] = self.clock.wall() + float(args[3]) / 1000
            return "OK"
        if cmd == "DEL":
            self.strings.pop(args[0], None)
            return 1
        if cmd == "PEXPIRE":
            return 1  # a lease set's expiry only saves memory: its members carry their own deadlines
        zset = self.zsets.setdefault(args[0], {})
        if cmd == "ZREMRANGEBYSCORE":
            hi = float(args[2])
            for member in [m for m, score in zset.items() if score <= hi]:
                del zset[member]
            return 0
        if cmd == "ZCARD":
            return len(zset)
        if cmd == "ZSCORE":
            return str(zset[args[1]]) if args[1] in zset else False
        if cmd == "ZADD":
            zset[str(args[2])] = float(args[1])
            return 1
        if cmd == "ZREM":
            return int(zset.pop(str(args[1]), None) is not None)
        raise NotImplementedError(cmd)


def _to_python(value: Any) -> Any:
    if lupa.lua_type(value) == "table":
        return [_to_python(value[i]) for i in range(1, len(value) + 1)]
    return value
