"""Configs and traces for the planner's tests."""

from __future__ import annotations

from typing import Any

from sluice.config import Settings, parse_settings
from sluice.plan import Trace, TraceRequest

HASHES = {name: "sha256:" + digit * 64 for name, digit in (("a", "0"), ("b", "1"), ("c", "2"), ("d", "3"))}


def settings_with(tiers: dict[str, Any], keys: dict[str, tuple[str, str]], *, sim: dict[str, Any] | None = None,
                  admission: dict[str, Any] | None = None) -> Settings:
    """A config of one simulated model ``m``; ``keys``: key id -> (tenant, tier)."""
    model: dict[str, Any] = {"name": "m", "sim": {"max_num_seqs": 8, "num_kv_blocks": 2048, **(sim or {})}}
    if admission is not None:
        model["admission"] = admission
    return parse_settings({"models": [model], "tiers": tiers,
                           "keys": [{"id": k, "hash": HASHES[k], "tenant": tenant, "tier": tier}
                                    for k, (tenant, tier) in keys.items()]})


def trace_of(*requests: tuple[float, str], prompt: int = 128, output: int = 32, stream: bool = True) -> Trace:
    """Requests (arrival s, key id), all of the same size."""
    return Trace(tuple(TraceRequest(at, key, None, None, None, prompt, output, output, stream)
                       for at, key in requests), 0, "test")
