"""``python -m bench.limiter``: start redis-server, run the three parts, write the results."""

from __future__ import annotations

import argparse
import datetime
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import redis

from bench.harness import (
    Processes,
    command_line,
    exit_on_signals,
    free_port,
    machine,
    wait_port,
    write_result,
)
from bench.limiter.decisions import part_decisions
from bench.limiter.gateway import part_gateway
from bench.limiter.overshoot import part_overshoot
from bench.limiter.report import source_state, tables
from bench.limiter.settings import GATEWAY_CPU, LOAD_CPU, RESULTS, TARGET_PCT, log

# ---------------------------------------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.limiter",
                                     description="Sluice's quota limiter: decisions/s, overshoot, gateway cost.")
    parser.add_argument("--decision-s", type=float, default=3.0, help="seconds of each timed decisions run (default 3)")
    parser.add_argument("--duration", type=int, default=5, help="seconds of each timed wrk run (default 5)")
    parser.add_argument("--warmup", type=int, default=1, help="seconds of wrk warm-up before each run (default 1)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--max-tokens", type=int, default=16, help="tokens per answer in the gateway part (default 16)")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--keep-logs", type=Path, help="copy the processes' stderr logs into this directory")
    args = parser.parse_args()

    wrk, redis_server = shutil.which("wrk"), shutil.which("redis-server")
    if wrk is None or redis_server is None:
        log("needs wrk and redis-server: apt-get update && apt-get install -y wrk redis-server")
        return 2
    if shutil.which("taskset") is None or (os.cpu_count() or 1) < 2:
        log("needs taskset (util-linux) and at least 2 CPUs")
        return 2
    exit_on_signals()

    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="sluice-limiter-") as tmp:
        workdir = Path(tmp)
        procs = Processes(workdir)
        try:
            redis_port = free_port()
            redis_proc = procs.start("redis", LOAD_CPU, [
                redis_server, "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--dir", str(workdir),
            ])
            wait_port(redis_proc, redis_port)
            redis_url = f"redis://127.0.0.1:{redis_port}/0"
            redis_version = redis.Redis(port=redis_port).info("server")["redis_version"]
            decisions = part_decisions(args, redis_url, redis_port)
            overshoot = part_overshoot(redis_url)
            gateway = part_gateway(args, wrk, workdir, procs, redis_url, redis_port)
        finally:
            procs.stop_all(args.keep_logs)
    result = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": command_line(),
        "wall_s": round(time.monotonic() - started, 1),
        "machine": {**machine(wrk=True), "redis": redis_version},
        "source": source_state(),
        "settings": {
            "decision_s": args.decision_s, "duration_s": args.duration, "warmup_s": args.warmup, "rounds": args.rounds,
            "max_tokens": args.max_tokens, "gateway_and_decisions_cpu": GATEWAY_CPU,
            "sim_redis_wrk_cpu": LOAD_CPU, "event_loop": "uvloop",
            "decision_plan": "QuotaLimiter.reserve + settle; 3 buckets (key requests, key tokens, tenant tokens) + "
                             "1 lease (key concurrent); 16 keys over 4 tenants; price 20+256, used 20+100",
        },
        "decisions": decisions,
        "overshoot": overshoot,
        "gateway": gateway,
    }
    result["table"] = tables(result)
    write_result(args.output, result)
    print(result["table"])
    print()
    ratios = gateway["on_over_off_pct"]
    print(f"target (quotas on >= {TARGET_PCT:.0f}% of quotas off, req/s, c64): full {ratios['full']:.1f}%, "
          f"stream {ratios['stream']:.1f}% -> {'MET' if gateway['target_met'] else 'MISSED'}")
    t1s = gateway["on_t1s_over_off_pct"]
    print(f"diagnostic, quotas on with store_timeout_s 1: full {t1s['full']:.1f}%, stream {t1s['stream']:.1f}%")
    print(f"EVALSHA calls during the gateway part: {gateway['evalsha_calls_during_gateway_part']}; "
          f"'quota store' log lines (degraded/recovered): {gateway['quota_store_log_lines_count']}; "
          f"leases left in Redis after the run: {gateway['leases_left_in_redis_after_run']}")
    print(f"gateway outcomes (access log, status reason: count): {gateway['access_log_outcomes']}")
    print(f"wrote {args.output} in {result['wall_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
