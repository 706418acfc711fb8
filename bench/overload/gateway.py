"""The gateway configuration of each overload configuration."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

from bench.overload.metrics import sim_kind
from bench.overload.settings import GATEWAY_PREEMPT, MODEL, TENANTS, TIERS
from sluice.identity import hash_key

# ---------------------------------------------------------------------------------------------- gateway


def priority_window(args: argparse.Namespace, kind: str = "engine-priority") -> int:
    """(d)'s fixed window: the engine's seats and --priority-headroom more (20 for 16 at 0.25); (e)'s the same
    with --preempt-headroom."""
    headroom = args.preempt_headroom if kind == "engine-preempt" else args.priority_headroom
    return int(math.ceil(args.max_num_seqs * (1 + headroom) - 1e-9))


def priority_reserve(args: argparse.Namespace, kind: str) -> dict[str, Any]:
    """(d) and (e)'s reserve for the top band: lower bands stop at floor(window x (1 - share))."""
    share = args.preempt_reserve if kind == "engine-preempt" else args.priority_reserve
    window = priority_window(args, kind)
    return {"window": window, "reserve_when": "always", "reserve_top_share": share,
            "lower_tiers_stop_at": math.floor(window * (1 - share))}


def gateway_config(kind: str, args: argparse.Namespace, port: int, sim_url: str, keys: dict[str, str],
                   access_log: Path) -> str:
    n = args.max_num_seqs
    extra = ""
    window_max = args.window_max
    if kind in GATEWAY_PREEMPT:
        extra = f"preemption: {{enabled: true, priority_gap: {args.preempt_threshold}}}, "
        kind = GATEWAY_PREEMPT[kind]
        window_max = n  # a window past the engine's seats would send premium to wait in the engine's queue
    if kind == "fixed":
        window = f"{{kind: fixed, initial: {n}}}"
    elif kind in ("engine-priority", "engine-preempt"):
        window = f"{{kind: fixed, initial: {priority_window(args, kind)}}}"
        # the top band's share of the window kept at all times: lower bands stop at floor(window x (1 - share))
        extra = (f"priority_to_engine: true, protection: {{reserve_when: always, "
                 f"reserve_top_share: {priority_reserve(args, kind)['reserve_top_share']}}}, ")
    elif args.adaptive == "aimd":
        window = (f"{{kind: aimd, initial: {n}, min: {args.window_min}, max: {window_max}, "
                  f"latency_threshold_s: {args.aimd_threshold_s}}}")
    else:
        window = f"{{kind: gradient, initial: {n}, min: {args.window_min}, max: {window_max}}}"
    tiers = "\n".join(f"  {name}: {{priority: {int(t['priority'])}, max_queue_s: {t['max_queue_s']}}}"
                      for name, t in TIERS.items())
    key_lines = "\n".join(
        f"  - {{id: {name}, hash: '{hash_key(keys[name])}', tenant: {name}, tier: {TENANTS[name][0]}}}"
        for name in TENANTS)
    return (
        f"server: {{host: 127.0.0.1, port: {port}, access_log_path: '{access_log}'}}\n"
        f"auth: {{mode: api_key}}\n"
        f"models:\n"
        f"  - name: {MODEL}\n"
        f"    engine: {{dialect: {sim_kind(kind)[1]}, urls: ['{sim_url}']}}\n"
        f"    admission: {{{extra}window: {window}}}\n"
        f"tiers:\n{tiers}\n"
        f"keys:\n{key_lines}\n"
    )
