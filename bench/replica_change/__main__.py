"""``python -m bench.replica_change``: its command line, the processes (three simulators, the gateway), the rounds
in turn, then the admin calls with no load; the results file."""

from __future__ import annotations

import argparse
import datetime
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.harness import (
    MODEL,
    Processes,
    command_line,
    exit_on_signals,
    free_port,
    git_commit,
    log,
    machine,
    preflight,
    request_body,
    run_wrk,
    wait_until_up,
    write_result,
)
from bench.replica_change.report import failures, markdown, ratios, summarise
from bench.replica_change.rounds import GATEWAY_CPU, LOAD_CPU, MIXED_LUA, STEADY_WITH_C, idle_cost, run_round
from sluice.identity import generate_key, hash_key

RESULTS = Path(__file__).resolve().parent.parent / "results" / "replica_change.json"
KINDS = (STEADY_WITH_C, "add-remove", "drain-undrain")


def main() -> int:
    parser = argparse.ArgumentParser(description="The cost of a replica-set change (admin API) under load.")
    parser.add_argument("--round-s", type=int, default=6, help="seconds of each round's wrk run (default 6)")
    parser.add_argument("--repeats", type=int, default=3, help="times each kind of round runs, in turn (default 3)")
    parser.add_argument("--warmup-s", type=int, default=2, help="seconds of load before the rounds (default 2)")
    parser.add_argument("--idle-changes", type=int, default=200,
                        help="changes back to back with no load after the rounds: CPU per change (default 200)")
    parser.add_argument("--connections", type=int, default=32, help="wrk's connections (default 32)")
    parser.add_argument("--max-tokens", type=int, default=8, help="tokens per answer (default 8)")
    parser.add_argument("--change-every-s", type=float, default=0.5, help="seconds between changes (default 0.5)")
    parser.add_argument("--kinds", default=",".join(KINDS),
                        help=f"rounds besides steady, comma-separated: {', '.join(KINDS)}")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--keep-logs", type=Path, help="copy the processes' stderr logs into this directory")
    args = parser.parse_args()
    kinds = [k for k in args.kinds.split(",") if k]
    if not set(kinds) <= set(KINDS):
        parser.error(f"--kinds: choose among {', '.join(KINDS)}")

    wrk = shutil.which("wrk")
    if wrk is None or shutil.which("taskset") is None or (os.cpu_count() or 1) < 2:
        print("needs wrk (apt-get install -y wrk), taskset and 2 CPUs", file=sys.stderr)
        return 2
    exit_on_signals()
    os.sched_setaffinity(0, {int(LOAD_CPU)})  # this script's admin calls and reads stay off the gateway's CPU

    with tempfile.TemporaryDirectory(prefix="sluice-replica-change-") as tmp:
        procs = Processes(Path(tmp))
        try:
            result = run(args, ["steady", *kinds], wrk, Path(tmp), procs)
        finally:
            procs.stop_all(args.keep_logs)
    write_result(args.output, result)
    print(result["table"])
    for line in result["failures"]:
        print(f"FAILURE: {line}", file=sys.stderr)
    print(f"wrote {args.output}")
    return 1 if result["failures"] else 0


def start(args: argparse.Namespace, wrk: str, workdir: Path, procs: Processes) -> dict[str, Any]:
    """Three simulators and the gateway (A and B its static replicas), each checked with one request."""
    admin_key = generate_key()
    n = str(args.max_tokens)
    sims, urls = [], []
    for name in ("sim_a", "sim_b", "sim_c"):
        port = free_port()
        urls.append(f"http://127.0.0.1:{port}")
        sims.append(procs.start(name, LOAD_CPU, [
            sys.executable, "-m", "sluice.cli", "sim", "--model", MODEL, "--host", "127.0.0.1", "--port", str(port),
            "--speed", "1e9", "--output-len-min", n, "--output-len-max", n]))
    for sim, url in zip(sims, urls, strict=True):
        wait_until_up(sim, url + "/health")  # before the gateway, whose first scrapes would fail and warn
    port = free_port()
    config = workdir / "sluice.yaml"
    config.write_text(
        f"server: {{host: 127.0.0.1, port: {port}}}\n"
        f"auth: {{mode: open, admin_key_hash: '{hash_key(admin_key)}'}}\n"
        f"models:\n  - name: {MODEL}\n    engine: {{dialect: vllm, urls: ['{urls[0]}', '{urls[1]}']}}\n")
    gateway = procs.start("gateway", GATEWAY_CPU, [sys.executable, "-m", "sluice.cli", "serve", "--config",
                                                   str(config)])
    gateway_url = f"http://127.0.0.1:{port}"
    wait_until_up(gateway, gateway_url + "/health")
    for stream in (False, True):
        preflight(gateway_url, "", stream, args.max_tokens)
    script = workdir / "mixed.lua"
    script.write_text(MIXED_LUA.format(full=request_body(False, args.max_tokens),
                                       stream=request_body(True, args.max_tokens)))
    return {"gateway": gateway, "gateway_url": gateway_url, "sims": sims, "sim_a": urls[0], "sim_c": urls[2],
            "admin_key": admin_key, "wrk": wrk, "script": script}


def run(args: argparse.Namespace, kinds: list[str], wrk: str, workdir: Path, procs: Processes) -> dict[str, Any]:
    started = time.monotonic()
    setup = start(args, wrk, workdir, procs)
    if args.warmup_s:
        run_wrk(wrk, setup["gateway_url"] + "/v1/chat/completions", setup["script"], args.connections,
                args.warmup_s, LOAD_CPU)
    rounds = []
    for repeat in range(args.repeats):
        for kind in kinds[repeat % len(kinds):] + kinds[:repeat % len(kinds)]:  # each kind first in turn
            rounds.append(run_round(kind, setup, args))
            r = rounds[-1]
            log(f"round {repeat + 1}/{args.repeats} {kind}: {r['rps']:.0f} req/s, p99 {r['p99_us'] / 1e3:.1f} ms, "
                f"{r['errors']} errors, {len(r['changes'])} changes")
    idle = [idle_cost(kind, setup, args.idle_changes) for kind in ["read", *kinds] if args.idle_changes
            and not kind.startswith("steady")]
    summary = summarise(rounds)
    ratio = ratios(summary)
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": command_line(), "commit": git_commit(), "machine": machine(wrk=True),
        "wall_s": round(time.monotonic() - started, 1),  # from the processes' start to the last round's end
        "load_average_at_end": os.getloadavg(),  # other work on the machine shows here
        "pinning": {"gateway": GATEWAY_CPU, "sims_wrk_and_this_script": LOAD_CPU},
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "summary": summary, "ratios": ratio, "idle": idle,
        "failures": failures(summary) + [f"idle {i['kind']}: {i['failed']} changes failed"
                                         for i in idle if i["failed"]],
        "table": markdown(summary, ratio, idle), "rounds": rounds,
    }


if __name__ == "__main__":
    sys.exit(main())
