"""Each proxy under test, configured as a plain single-upstream proxy in front of the simulator and started alone
on the proxy CPU, limited to one thread or worker: its config file, its command line, its readiness check.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from bench.harness import (
    MODEL,
    WRK_LUA,
    Proc,
    Processes,
    free_port,
    request_body,
    start_redis,
    wait_port,
    wait_until_up,
)
from bench.peers.settings import LONG_STREAM_CONCURRENCY, PROXY_CPU
from sluice.identity import generate_key, hash_key

IN_FLIGHT = 2 * LONG_STREAM_CONCURRENCY  # room for every stream at once in Sluice's window and connection pool


@dataclass(frozen=True)
class Upstream:
    """What every proxy needs to know: the simulator, the key Sluice checks, the Redis it counts in."""

    sim_url: str
    sim_port: int
    key: str
    redis_url: str
    workdir: Path
    sim_pid: int | None = None  # when started here (``start_upstream``): their CPU can be counted
    redis_pid: int | None = None


@dataclass(frozen=True)
class Started:
    proc: Proc
    base_url: str
    config: str  # the config file or flags, for the results


def start_upstream(procs: Processes, workdir: Path, max_tokens: int = 16, cpu: str = "0") -> Upstream:
    """The simulator (``--speed 1e9``, ``max_tokens``-token answers) and a Redis on ``cpu``, and a key for Sluice."""
    sim_port = free_port()
    sim = procs.start("sim", cpu, [sys.executable, "-m", "sluice.cli", "sim", "--model", MODEL, "--port", str(sim_port),
                                   "--speed", "1e9", "--output-len-min", str(max_tokens), "--output-len-max",
                                   str(max_tokens)])
    wait_until_up(sim, f"http://127.0.0.1:{sim_port}/health")
    redis, redis_port = start_redis(procs, cpu)
    return Upstream(f"http://127.0.0.1:{sim_port}", sim_port, generate_key(), f"redis://127.0.0.1:{redis_port}/0",
                    workdir, sim.pid, redis.pid)


def wrk_scripts(up: Upstream, max_tokens: int = 16) -> dict[bool, Path]:
    """wrk's scripts for a chat request with ``up``'s key, non-streamed (False) and streamed (True)."""
    scripts = {}
    for stream in (False, True):
        scripts[stream] = up.workdir / f"{'stream' if stream else 'full'}.lua"
        scripts[stream].write_text(WRK_LUA.format(body=request_body(stream, max_tokens), key=up.key))
    return scripts


KNOCKOUTS = ("quota", "redis", "admission", "access_log")  # parts "sluice_full-<part>" runs without


def sluice_yaml(port: int, up: Upstream, *, full: bool, without: str | None = None) -> str:
    """Open mode: no keys, memory state, no admission, no access log. Full: API keys, quotas on Redis (requests,
    tokens and concurrency per key, far above what the run uses, so every request makes its round trip), admission
    (scraping the simulator's load), metrics, the access log to a file. ``without`` (one of ``KNOCKOUTS``): full
    but for that part (the tier's limits; Redis, the quotas kept in memory; admission; the access log), to
    measure what it costs."""
    engine = f"{{dialect: vllm, urls: ['{up.sim_url}'], max_connections: {IN_FLIGHT}}}"
    if not full:
        return (f"server: {{host: 127.0.0.1, port: {port}, access_log: false}}\n"
                "state: memory://\nauth: {mode: open}\n"
                f"models:\n  - name: {MODEL}\n    engine: {engine}\n    admission: {{enabled: false}}\n")
    if without is not None and without not in KNOCKOUTS:
        raise ValueError(f"unknown part {without!r}: one of {', '.join(KNOCKOUTS)}")
    admission = f"{{window: {{initial: {IN_FLIGHT}, max: {IN_FLIGHT}}}}}"
    limits = "{requests: '100000000/minute', tokens: '100000000000/minute', concurrent: 4096}"
    if without == "admission":
        admission = "{enabled: false}"
    if without == "quota":
        limits = "{}"
    return (f"server: {{host: 127.0.0.1, port: {port}, access_log: {'false' if without == 'access_log' else 'true'}, "
            f"access_log_path: '{up.workdir / 'sluice_full.access.log'}'}}\n"
            f"state: '{'memory://' if without == 'redis' else up.redis_url}'\nauth: {{mode: api_key}}\n"
            f"models:\n  - name: {MODEL}\n    engine: {engine}\n"
            f"    admission: {admission}\n"
            f"tiers:\n  pro: {limits}\n"
            f"keys:\n  - {{id: bench, hash: '{hash_key(up.key)}', tenant: acme, tier: pro}}\n")


def envoy_yaml(port: int, up: Upstream) -> str:
    """A minimal static Envoy: one listener, one route (no timeout: long streams), one cluster, no access log."""
    return f"""\
static_resources:
  listeners:
  - name: ingress
    address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{prefix: "/"}}
                route: {{cluster: engine, timeout: 0s}}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: engine
    type: STATIC
    lb_policy: ROUND_ROBIN
    load_assignment:
      cluster_name: engine
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {up.sim_port}}}}}}}
"""


def nginx_conf(port: int, up: Upstream, prefix: Path) -> str:
    """One worker, no access log, kept-alive upstream connections, no buffering (SSE relayed as it comes)."""
    temp = " ".join(f"{kind}_temp_path {prefix / kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi",
                                                                       "scgi"))
    return f"""\
worker_processes 1;
daemon off;
user root;
pid {prefix / 'nginx.pid'};
error_log {prefix / 'error.log'} warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  {temp}
  upstream engine {{ server 127.0.0.1:{up.sim_port}; keepalive {IN_FLIGHT}; }}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://engine;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
      proxy_read_timeout 600s;
    }}
  }}
}}
"""


def start(name: str, procs: Processes, up: Upstream, commands: dict[str, Path],
          env: dict[str, str] | None = None) -> Started:
    """Start target ``name`` on the proxy CPU and wait until it answers (Sluice with ``env`` added)."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    one_thread = {"TOKIO_WORKER_THREADS": "1"}  # the routers' tokio runtime: one worker thread
    if name in ("sluice_open", "sluice_full") or name.startswith("sluice_full-"):
        config = up.workdir / f"{name}.yaml"
        config.write_text(sluice_yaml(port, up, full=name != "sluice_open", without=name.partition("-")[2] or None))
        proc = procs.start(name, PROXY_CPU, [sys.executable, "-m", "sluice.cli", "serve", "--config", str(config)],
                           env=env)
        wait_until_up(proc, base + "/health")
        return Started(proc, base, config.read_text())
    if name == "bare_proxy":
        argv = [sys.executable, "-m", "bench.bare_proxy", "--upstream", up.sim_url, "--port", str(port)]
        proc = procs.start(name, PROXY_CPU, argv)
        wait_port(proc, port)
        return Started(proc, base, " ".join(argv[1:]))
    if name == "vllm_router":
        flags = ["--host", "127.0.0.1", "--port", str(port), "--worker-urls", up.sim_url, "--policy", "round_robin",
                 "--prometheus-host", "127.0.0.1", "--prometheus-port", str(free_port()), "--log-level", "warning"]
        proc = procs.start(name, PROXY_CPU, [str(commands[name]), *flags], env=one_thread)
    elif name == "sglang_router":
        flags = ["launch", "--host", "127.0.0.1", "--port", str(port), "--worker-urls", up.sim_url, "--policy",
                 "round_robin", "--prometheus-host", "127.0.0.1", "--prometheus-port", str(free_port()),
                 "--log-level", "warn"]
        proc = procs.start(name, PROXY_CPU, [str(commands[name]), *flags], env=one_thread)
    elif name == "envoy":
        config = up.workdir / "envoy.yaml"
        config.write_text(envoy_yaml(port, up))
        flags = ["-c", str(config), "--concurrency", "1", "--log-level", "warn", "--base-id", str(port)]
        proc = procs.start(name, PROXY_CPU, [str(commands[name]), *flags])
    elif name == "nginx":
        prefix = up.workdir / "nginx"
        prefix.mkdir(exist_ok=True)
        config = prefix / "nginx.conf"
        config.write_text(nginx_conf(port, up, prefix))
        flags = ["-p", str(prefix), "-c", str(config)]
        proc = procs.start(name, PROXY_CPU, [str(commands[name]), *flags])
    else:
        raise ValueError(f"unknown target {name}")
    wait_port(proc, port, timeout_s=60)
    return Started(proc, base, " ".join(flags) if name.endswith("router") else config.read_text())
