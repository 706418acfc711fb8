"""``python -m bench.overload``: its command line, then the run (or --render-only) and its outputs."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.harness import Processes, exit_on_signals, write_result
from bench.overload.report import markdown, plot, verdicts
from bench.overload.run import run
from bench.overload.settings import CONFIGS, DOC_IMG, FIFO_PRIORITY, LOAD_CPU, PLOTS, RESULTS
from sluice.bench import (
    Fixed,
    Uniform,
    parse_dist,
)


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m bench.overload",
                                description="Sluice under overload: direct vs fixed window vs adaptive window vs "
                                            "engine priority (vLLM's, SGLang's with preemption).")
    p.add_argument("--loads", default="0.5,1,2,3", help="offered loads, in multiples of the engine's capacity")
    p.add_argument("--configs", default=",".join(CONFIGS), help=f"which of {', '.join(CONFIGS)}")
    p.add_argument("--duration", type=float, default=25.0, help="seconds of arrivals per run (default 25)")
    p.add_argument("--warmup", type=float, default=5.0, help="first seconds of each run not measured (default 5)")
    p.add_argument("--unloaded-duration", type=float, default=120.0,
                   help="seconds of the unloaded run (default 120: ~360 premium requests; with 180 its p99 still "
                        "moved 20-26 ms run to run)")
    p.add_argument("--capacity-duration", type=float, default=12.0)
    p.add_argument("--capacity-warmup", type=float, default=3.0)
    p.add_argument("--timeout", type=float, default=30.0, help="client timeout per request, seconds (default 30)")
    p.add_argument("--speed", type=float, default=2.0)
    p.add_argument("--max-num-seqs", type=int, default=16)
    p.add_argument("--input-len", type=int, default=256)
    p.add_argument("--output-len", default="64",
                   help="answer length in tokens: a number, or LOW-HIGH for uniform (sluice bench's length spec)")
    p.add_argument("--endpoint", choices=("chat", "completions"), default="chat")
    p.add_argument("--adaptive", choices=("gradient", "aimd"), default="gradient")
    p.add_argument("--priority-headroom", type=float, default=0.25,
                   help="engine-priority: the fixed window is max_num_seqs x (1 + this), rounded up (default 0.25)")
    p.add_argument("--preempt-mixed", action=argparse.BooleanOptionalAction, default=True,
                   help="engine-preempt: the simulator mixes prefill and decode in one step, as SGLang does with "
                        "--enable-mixed-chunk (default); --no-preempt-mixed: SGLang's default, prefill-only steps")
    p.add_argument("--preempt-threshold", type=int, default=5,
                   help="engine-preempt: the simulator's --priority-preemption-threshold (SGLang's "
                        "--priority-scheduling-preemption-threshold; default 5: premium preempts standard and batch, "
                        "standard does not preempt batch; SGLang's default 10: premium preempts batch only); "
                        "fixed-preempt, adaptive-preempt: the gateway's admission.preemption.priority_gap, the same")
    p.add_argument("--priority-reserve", type=float, default=0.2,
                   help="engine-priority: protection.reserve_top_share with reserve_when: always, the window's share "
                        "kept for premium at all times (default 0.2: lower tiers stop at 16 of 20)")
    p.add_argument("--preempt-headroom", type=float, default=0.5,
                   help="engine-preempt: as --priority-headroom, for (e) (default 0.5: window 24 for 16 seats)")
    p.add_argument("--preempt-reserve", type=float, default=0.375,
                   help="engine-preempt: as --priority-reserve, for (e) (default 0.375: lower tiers stop at 15 of 24; "
                        "premium's 9 places reach the engine, which preempts lower tiers for them)")
    p.add_argument("--window-min", type=int, default=4)
    p.add_argument("--window-max", type=int, default=64)
    p.add_argument("--aimd-threshold-s", type=float, default=0.25, help="aimd only: a slower first token is a drop")
    p.add_argument("--slo-ttft-s", type=float, default=1.0, help="goodput's TTFT target (default 1 s)")
    p.add_argument("--slo-tpot-ms", type=float, default=None,
                   help="goodput's TPOT target (default: 2x the engine's TPOT p50 at capacity, measured first)")
    p.add_argument("--sched", choices=("fifo", "nice", "none"), default="fifo",
                   help="scheduling of the simulator, the gateway and the load generator: fifo (SCHED_FIFO, "
                        "default: the simulator at priority 2, the others at 1), nice (-10) or none; so that the "
                        "host's other load does not stretch the simulated engine's step times or delay the gateway")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", type=Path, default=RESULTS)
    p.add_argument("--plots-dir", type=Path, default=PLOTS)
    p.add_argument("--docs", action="store_true", help="copy the key plots into docs/img/")
    p.add_argument("--keep-logs", type=Path, help="copy the processes' stderr logs and access logs here")
    p.add_argument("--dump-requests", type=Path, help="write every request's result here, one JSONL file per run")
    p.add_argument("--render-only", action="store_true",
                   help="run nothing: rebuild the tables and plots of --output from the results it holds")
    args = p.parse_args()
    # the simulator's step-time defaults (SimSettings), for the capacity the parameters predict
    args.prefill_s_per_token, args.decode_base_s, args.decode_per_seq_s = 0.00005, 0.008, 0.0002
    args.output_dist = parse_dist(args.output_len, "output")
    if not isinstance(args.output_dist, (Fixed, Uniform)):
        p.error("--output-len: a number or LOW-HIGH")
    args.output_range = ((args.output_dist.tokens,) * 2 if isinstance(args.output_dist, Fixed)
                         else (args.output_dist.low, args.output_dist.high))
    args.output_mean = sum(args.output_range) / 2  # Fixed or Uniform
    if args.render_only:
        result = json.loads(args.output.read_text())
        result["verdict"] = verdicts(result)
        result["table"] = markdown(result)
        finish(result, args)
        return 0
    loads = [float(x) for x in args.loads.split(",")]
    configs = [c for c in args.configs.split(",") if c]
    if unknown := [c for c in configs if c not in CONFIGS]:
        p.error(f"unknown configs: {unknown}")
    if shutil.which("taskset") is None or (os.cpu_count() or 1) < 2:
        print("needs taskset (util-linux) and at least 2 CPUs", file=sys.stderr)
        return 2
    exit_on_signals()
    os.sched_setaffinity(0, {int(LOAD_CPU)})
    try:
        if args.sched == "fifo":
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(FIFO_PRIORITY))
        elif args.sched == "nice":
            os.setpriority(os.PRIO_PROCESS, 0, -10)
    except PermissionError:
        print(f"cannot set --sched {args.sched} (needs CAP_SYS_NICE): running with --sched none", file=sys.stderr)
        args.sched = "none"

    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="sluice-overload-") as tmp:
        workdir = Path(tmp)
        procs = Processes(workdir)
        try:
            result = asyncio.run(run(args, loads, configs, workdir, procs))
        finally:
            procs.stop_all()
            if args.keep_logs:
                args.keep_logs.mkdir(parents=True, exist_ok=True)
                for f in workdir.glob("*.log"):
                    shutil.copy(f, args.keep_logs / f.name)
    result["wall_s"] = round(time.monotonic() - started, 1)
    finish(result, args)
    return 0


def finish(result: dict[str, Any], args: argparse.Namespace) -> None:
    """Plots (and their copies in docs/img with --docs), the results file, the tables and verdicts on stdout."""
    args.plots_dir.mkdir(parents=True, exist_ok=True)
    try:
        result["plots"] = [str(p_) for p_ in plot(result, args.plots_dir)]
        if args.docs:
            DOC_IMG.mkdir(parents=True, exist_ok=True)
            for name in ("overload_ttft.png", "overload_goodput.png", "overload_window.png"):
                if (args.plots_dir / name).exists():
                    shutil.copy(args.plots_dir / name, DOC_IMG / name)
    except ImportError:
        print("matplotlib is not installed: no plots (pip install 'sluice[bench]')", file=sys.stderr)
    write_result(args.output, result, indent=1)
    print(result["table"])
    for config, v in result["verdict"].items():
        print(f"{config}: premium p99 TTFT {v['premium_p99_ms']:.0f} ms = {v['premium_ratio']:.2f}x unloaded "
              f"({'MET' if v['premium_met'] else 'MISSED'}); engine {100 * v['engine_share']:.1f}% of max "
              f"({'MET' if v['engine_met'] else 'MISSED'}); Jain {v['jain']:.3f}"
              f"{' (both 0)' if v['jain_both_zero'] else ''} "
              f"({'MET' if v['jain_met'] else 'MISSED'})")
    print(f"wrote {args.output} ({result['wall_s']} s wall)")




if __name__ == "__main__":
    sys.exit(main())
