"""One round: a wrk run of fixed length against the gateway, with a change (or the control's tick) every 0.5 s, and
what it cost (requests/s, latency, the gateway's CPU and counters); and the admin calls' CPU with no load."""

from __future__ import annotations

import argparse
import os
import threading
import time
from typing import Any

from bench.harness import MODEL, WRK_DONE_LUA, run_wrk
from bench.replica_change.probes import PATHS, Changer, Control, fetch, metric_sum
from bench.replica_change.report import quantiles

GATEWAY_CPU, LOAD_CPU = "1", "0"
STEADY_WITH_C = "steady-with-c"  # C in the set for the whole round, no change: what C's presence alone costs

MIXED_LUA = """\
local bodies = {{[==[{full}]==], [==[{stream}]==]}}
local n = 0
request = function()
  n = n + 1
  return wrk.format("POST", nil, {{["Content-Type"] = "application/json"}}, bodies[n % 2 + 1])
end
""" + "\n" + WRK_DONE_LUA


def self_cpu_s() -> float:
    usage = os.times()
    return usage.user + usage.system


def run_round(kind: str, setup: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """One wrk run of ``args.round_s`` seconds, with a change every ``args.change_every_s`` (a steady round: the
    control's tick)."""
    steady = kind.startswith("steady")
    changer: Changer | Control = (Control(setup["sim_a"]) if steady else
                                  Changer(setup["gateway_url"], setup["admin_key"], setup["sim_c"], kind))
    changer.prepare()
    if kind == STEADY_WITH_C:
        admin(setup, "/admin/replicas")
    counts_before = gateway_counts(setup["gateway_url"])
    gateway, sims = setup["gateway"], setup["sims"]
    cpu_before = (gateway.cpu_s(), sum(s.cpu_s() for s in sims), self_cpu_s(), os.times().children_user
                  + os.times().children_system)
    holder: dict[str, Any] = {}

    def load() -> None:
        try:
            holder.update(run_wrk(setup["wrk"], setup["gateway_url"] + "/v1/chat/completions", setup["script"],
                                  args.connections, args.round_s, cpu=LOAD_CPU))
        except Exception as exc:  # noqa: BLE001 - reported by the round, not lost in a thread
            holder["failure"] = repr(exc)

    started = time.monotonic()
    changer.load_ends_at = started + args.round_s
    thread = threading.Thread(target=load, daemon=True)
    thread.start()
    next_at = started + args.change_every_s
    while thread.is_alive() and next_at <= started + args.round_s - args.change_every_s / 2:
        time.sleep(max(0.0, next_at - time.monotonic()))
        changer.change()
        next_at += args.change_every_s
    thread.join()
    wall_s = time.monotonic() - started
    times = os.times()
    cpu_after = (gateway.cpu_s(), sum(s.cpu_s() for s in sims), self_cpu_s(), times.children_user
                 + times.children_system)
    changer.finish()
    if kind == STEADY_WITH_C:
        admin(setup, "/admin/replicas/remove")
    if "failure" in holder:
        raise RuntimeError(f"wrk failed in round {kind}: {holder['failure']}")
    used = [after - before for before, after in zip(cpu_before, cpu_after, strict=True)]
    return {
        **holder, "kind": kind, "wall_s": wall_s, "connections": args.connections,
        "gateway_counts": {k: v - counts_before.get(k, 0.0) for k, v in gateway_counts(setup["gateway_url"]).items()},
        "gateway_cpu_pct": 100 * used[0] / wall_s,
        "gateway_cpu_us_per_request": 1e6 * used[0] / max(1, holder["requests"]),
        "load_cpu_pct": 100 * (used[1] + used[2] + used[3]) / wall_s,  # sims + this script + wrk, on LOAD_CPU
        "changes": changer.changes,  # the steady rounds': the control's ticks
    }


def admin(setup: dict[str, Any], path: str) -> None:
    """One admin call about C that must succeed (the steady-with-c rounds' setting up)."""
    status, text = fetch(setup["gateway_url"] + path, {"model": MODEL, "url": setup["sim_c"]}, setup["admin_key"])
    if status != 200:
        raise RuntimeError(f"{path} {setup['sim_c']}: HTTP {status}: {text[:300]}")


def idle_cost(kind: str, setup: dict[str, Any], changes: int) -> dict[str, Any]:
    """The gateway's CPU per change with no load: ``changes`` admin calls back to back (C in, out, in, ...), less
    what the idle gateway uses in the same time (its scrapes and probes), measured just before. ``read`` is the
    control: as many ``GET /admin/replicas`` (an admin call, the set's snapshot in the answer, no change)."""
    gateway = setup["gateway"]
    idle_from, idle_cpu = time.monotonic(), gateway.cpu_s()
    time.sleep(1.0)
    idle_rate = (gateway.cpu_s() - idle_cpu) / (time.monotonic() - idle_from)
    changer = Changer(setup["gateway_url"], setup["admin_key"], setup["sim_c"], kind)
    changer.prepare()
    admin_ms, failed = [], 0
    started, cpu = time.monotonic(), gateway.cpu_s()
    for _ in range(changes):
        if kind == "read":
            sent = time.monotonic()
            status, _text = fetch(f"{setup['gateway_url']}/admin/replicas?model={MODEL}", key=setup["admin_key"])
            answered = time.monotonic()
            failed += status != 200
        else:
            bring_in = not changer.inside
            status, doc, sent, answered = changer.call(PATHS[(kind, bring_in)])
            state = {r["url"]: r["state"] for r in doc.get("replicas", [])}.get(changer.sim, "gone")
            failed += status != 200 or (state == "active") != bring_in
            changer.inside = bring_in
        admin_ms.append(1e3 * (answered - sent))
    wall_s, used_s = time.monotonic() - started, gateway.cpu_s() - cpu
    changer.finish()
    return {"kind": kind, "changes": changes, "failed": failed, "admin_ms": quantiles(admin_ms),
            "gateway_cpu_ms_per_call": 1e3 * (used_s - idle_rate * wall_s) / changes,
            "idle_gateway_cpu_pct": 100 * idle_rate}


def gateway_counts(gateway_url: str, settle_s: float = 5.0) -> dict[str, float]:
    """The gateway's counters a round reads before and after: rejections by reason, protection mode engaged. Read
    once no inference request is in flight (up to ``settle_s``), so that the requests wrk cut at the end of a run
    are counted in that run's round, not the next."""
    deadline = time.monotonic() + settle_s
    while True:
        text = fetch(gateway_url + "/metrics")[1]
        in_flight = metric_sum(text, "sluice_requests_in_flight", route="/v1/chat/completions")
        if in_flight == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    counts = {"protection_engaged": metric_sum(text, "sluice_protection_transitions_total", to="engaged")}
    for line in text.splitlines():
        if line.startswith("sluice_rejections_total{"):
            reason = line.split('reason="', 1)[1].split('"', 1)[0]
            counts[f"rejected:{reason}"] = counts.get(f"rejected:{reason}", 0.0) + float(line.rsplit(" ", 1)[1])
    return counts
