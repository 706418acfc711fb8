"""What a launched replica costs in time: ``EngineLauncher.add()`` (spawn, health, warm-up), ``remove()`` (SIGTERM to
its process group, reaped) and a supervised restart after SIGKILL (until healthy again, its 1 s backoff included),
on the built-in simulator (``--backend sim``: a real process, the same path as an engine, without the engine's own
load time, so what is measured is the launcher's part plus a Python server's start).

    python -m bench.launcher        # --repeats 5 (about 30 s)

Output: a markdown table on stdout (median and max of each step, seconds), everything in
bench/results/launcher.json. A real engine adds its own load time to ``add()`` and to a restart.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.harness import RESULTS_DIR, command_line, git_commit, log, machine, write_result
from sluice.clock import MonotonicClock
from sluice.engines import EngineLauncher, GpuPool, ReplicaPlanner, VisibleGpus
from sluice.engines.dialects import LaunchSpec


async def run(repeats: int) -> dict[str, list[float]]:
    spec = LaunchSpec(model="m", port=0, served_model_name="m", extra_args=("--speed", "100"))
    planner = ReplicaPlanner("sim", spec, GpuPool(VisibleGpus((), "none")))
    times: dict[str, list[float]] = {"add_s": [], "restart_s": [], "remove_s": []}
    with tempfile.TemporaryDirectory() as logs:
        launcher = EngineLauncher([], MonotonicClock(), log_dir=Path(logs), health_timeout_s=60, warmup_model="m",
                                  planner=planner)
        try:
            for i in range(repeats):
                t0 = time.perf_counter()
                url = await launcher.add()
                times["add_s"].append(time.perf_counter() - t0)
                (replica,) = [r for r in launcher.snapshot() if r["url"] == url]
                os.killpg(int(str(replica["pid"])), signal.SIGKILL)
                t0 = time.perf_counter()
                while True:
                    (now,) = [r for r in launcher.snapshot() if r["url"] == url]
                    if now["restarts"] == 1 and now["state"] == "healthy":
                        break
                    await asyncio.sleep(0.01)
                times["restart_s"].append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                await launcher.remove(url)
                times["remove_s"].append(time.perf_counter() - t0)
                log(f"round {i + 1}/{repeats}: " + ", ".join(f"{k} {v[-1]:.2f}" for k, v in times.items()))
        finally:
            await launcher.stop()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    times = asyncio.run(run(args.repeats))
    summary: dict[str, Any] = {k: {"median": statistics.median(v), "max": max(v)} for k, v in times.items()}
    print(f"`{command_line()}` at {git_commit()}\n")
    print("| step | median s | max s |\n|---|---|---|")
    for step, s in summary.items():
        print(f"| {step} | {s['median']:.2f} | {s['max']:.2f} |")
    write_result(RESULTS_DIR / "launcher.json", {"command": command_line(), "commit": git_commit(),
                                                  "machine": machine(), "times": times, "summary": summary})


if __name__ == "__main__":
    main()
