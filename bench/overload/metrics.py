"""What overload reads while it runs: the simulator's and the gateway's Prometheus metrics, sampled."""

from __future__ import annotations

import asyncio
import math
import re
import time

import aiohttp

from bench.overload.settings import SAMPLE_EVERY_S, SIM_DIALECT, SIM_POLICY, sim_metric_aliases

# ---------------------------------------------------------------------------------------------- metrics


def parse_prometheus(text: str) -> dict[str, float]:
    """name -> value summed over its label sets (enough for the gauges and counters read here)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.match(r"^([A-Za-z_:][A-Za-z0-9_:]*)(\{.*\})?\s+(\S+)", line)
        if m is None:
            continue
        with_labels = m.group(1) + (m.group(2) or "")
        value = float(m.group(3))
        out[m.group(1)] = out.get(m.group(1), 0.0) + value
        out[with_labels] = value
    return out


async def scrape(session: aiohttp.ClientSession, url: str) -> dict[str, float]:
    async with session.get(url + "/metrics", timeout=aiohttp.ClientTimeout(total=5)) as resp:
        return parse_prometheus(await resp.text())


async def scrape_sim(session: aiohttp.ClientSession, url: str, dialect: str) -> dict[str, float]:
    """The simulator's /metrics, its dialect's names also under vLLM's."""
    metrics = await scrape(session, url)
    for theirs, ours in sim_metric_aliases(dialect).items():
        if theirs in metrics:
            metrics[ours] = metrics[theirs]
    return metrics


def sim_kind(config: str) -> tuple[str, str]:
    """The simulator a configuration runs on: (scheduling policy, dialect)."""
    return SIM_POLICY.get(config, "fcfs"), SIM_DIALECT.get(config, "vllm")


GATEWAY_GAUGES = ("sluice_admission_limit", "sluice_admission_in_flight", "sluice_admission_queued",
                  "sluice_engine_saturation", "sluice_protection_engaged")
SIM_GAUGES = ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc")


class Sampler:
    """Reads the simulator's token counter at the window's edges, and both /metrics every SAMPLE_EVERY_S."""

    def __init__(self, sim_url: str, gateway_url: str | None, warmup_s: float, duration_s: float,
                 sim_dialect: str = "vllm") -> None:
        self.sim_url, self.gateway_url, self.sim_dialect = sim_url, gateway_url, sim_dialect
        self.warmup_s, self.duration_s = warmup_s, duration_s
        self.edges: dict[str, tuple[float, float]] = {}  # "begin"/"end" -> (t_s, generation tokens)
        self.edge_preemptions: dict[str, float] = {}  # "begin"/"end" -> the simulator's preemptions so far
        self.series: list[dict[str, float]] = []
        self.end_gateway: dict[str, float] = {}

    async def run(self, t0: float, *, until_cancelled: bool) -> None:
        async with aiohttp.ClientSession() as session:
            next_edge = [("begin", self.warmup_s), ("end", self.duration_s)]
            while next_edge or until_cancelled:
                now = time.monotonic() - t0
                if next_edge and now >= next_edge[0][1]:
                    try:
                        sim = await scrape_sim(session, self.sim_url, self.sim_dialect)
                    except (TimeoutError, aiohttp.ClientError):
                        continue  # try again at once
                    name, _ = next_edge.pop(0)
                    self.edges[name] = (time.monotonic() - t0, sim["vllm:generation_tokens_total"])
                    self.edge_preemptions[name] = sim.get("vllm:num_preemptions_total", math.nan)
                    continue
                row = {"t_s": round(now, 2)}
                try:
                    sim = await scrape_sim(session, self.sim_url, self.sim_dialect)
                    row.update({k: sim.get(k, math.nan) for k in SIM_GAUGES})
                    if self.gateway_url:
                        gw = await scrape(session, self.gateway_url)
                        row.update({k: gw.get(k, math.nan) for k in GATEWAY_GAUGES})
                except (TimeoutError, aiohttp.ClientError) as exc:
                    row["error"] = f"{type(exc).__name__}"
                self.series.append(row)
                now = time.monotonic() - t0
                wait = SAMPLE_EVERY_S if not next_edge else min(SAMPLE_EVERY_S, next_edge[0][1] - now)
                await asyncio.sleep(max(0.0, wait))

    async def final_gateway(self) -> None:
        if self.gateway_url:
            async with aiohttp.ClientSession() as session:
                self.end_gateway = await scrape(session, self.gateway_url)

    def engine_tokens_per_s(self) -> float:
        (t_begin, g_begin), (t_end, g_end) = self.edges["begin"], self.edges["end"]
        return (g_end - g_begin) / (t_end - t_begin)


async def wait_drained(sim_url: str, sim_dialect: str, timeout_s: float = 90.0) -> float:
    """Wait until the simulator has nothing running or waiting; return how long that took."""
    started = time.monotonic()
    async with aiohttp.ClientSession() as session:
        while time.monotonic() - started < timeout_s:
            m = await scrape_sim(session, sim_url, sim_dialect)
            if m.get("vllm:num_requests_running", 0) == 0 and m.get("vllm:num_requests_waiting", 0) == 0:
                return time.monotonic() - started
            await asyncio.sleep(0.2)
    raise RuntimeError(f"the simulator did not drain within {timeout_s} s")
