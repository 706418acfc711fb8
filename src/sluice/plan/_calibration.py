"""The simulated engine's speed, calibrated: from the config's ``sim`` settings (the default), from a bench run
against the real engine, or from the real engine's own metrics.

The simulator's step time is ``(prefill_s_per_token * prefilled + decode_base_s + decode_per_seq_s * batch) /
speed`` (sim/_engine.py). Calibration keeps the shape of the model (seats, KV cache, dialect, the ratios of its
times) and fits its speed.

From a bench run (``results.jsonl``; streamed, successful requests, against one replica, directly or through a
gateway): ``speed`` such that the planner, replaying that run against one replica with no quota and the default
admission, predicts the run's median TPOT. It is found by replaying (TPOT scales as 1 / speed; three rounds), so
the batch the run held and the prefills that ran among its decodes count as they did. Prefill is scaled with
decode: a bench run's TTFT holds the gateway's and HTTP's own time, which is no engine step. A run at moderate
load calibrates best (its batch is the engine's, not a queue's).

From vLLM's ``/metrics`` text (the names are the vllm dialect's, in sluice/dialects.py): the inter-token latency
histogram's mean is one decode step at the batch ``B`` the engine ran at (``--batch``, else the running-requests
gauge at the time of the scrape): ``decode_base_s`` and ``decode_per_seq_s`` are scaled so that ``decode_base_s +
decode_per_seq_s * B`` equals it; the TTFT histogram's mean, less one decode step, over the mean prompt (the prompt
tokens counter over the TTFT count) is ``prefill_s_per_token`` (a TTFT holds any wait in the engine's queue: scrape
an engine that ran at moderate load); ``speed`` is 1.
"""

from __future__ import annotations

import re
from pathlib import Path

import orjson

from sluice.bench import percentile
from sluice.config import AuthSettings, ModelSettings, Settings, SimSettings
from sluice.dialects import facts_for
from sluice.errors import ConfigError
from sluice.plan._replay import replay
from sluice.plan._trace import read_trace

MIN_SAMPLES = 10
ROUNDS = 3

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+([^\s]+)")


def calibrated(base: SimSettings, *, tpot_s: float, batch: float, prefill_ttft_s: float,
               prompt_tokens: float) -> SimSettings:
    """``base`` with its decode step taking ``tpot_s`` at ``batch`` sequences, and its prefill fitted so that a
    prompt of ``prompt_tokens`` seated at once gets its first token after ``prefill_ttft_s``."""
    if tpot_s <= 0 or batch <= 0 or prompt_tokens <= 0:
        raise ConfigError("calibration needs a positive time per output token, batch and prompt size")
    modelled = base.decode_base_s + base.decode_per_seq_s * batch
    scale = tpot_s / modelled if modelled > 0 else 1.0
    decode_base, per_seq = base.decode_base_s * scale, base.decode_per_seq_s * scale
    if modelled <= 0:
        decode_base, per_seq = tpot_s, 0.0
    prefill = max(0.0, prefill_ttft_s - tpot_s) / prompt_tokens
    return base.model_copy(update={"decode_base_s": decode_base, "decode_per_seq_s": per_seq,
                                   "prefill_s_per_token": prefill, "speed": 1.0})


def from_bench(base: SimSettings, path: str | Path, *, model: str = "model") -> SimSettings:
    """``base`` at the speed that reproduces the median TPOT of the bench run at ``path``."""
    trace = read_trace(path)
    results = Path(path) / "results.jsonl" if Path(path).is_dir() else Path(path)
    try:
        rows = [orjson.loads(line) for line in results.read_bytes().splitlines() if line.strip()]
    except (OSError, orjson.JSONDecodeError) as exc:
        raise ConfigError(f"{results}: cannot read the bench results to calibrate from: {exc}") from exc
    tpots = [r["tpot_s"] for r in rows if isinstance(r, dict) and r.get("ok") and r.get("tpot_s")]
    if len(tpots) < MIN_SAMPLES:
        raise ConfigError(f"{results}: calibration needs at least {MIN_SAMPLES} successful streamed requests of two "
                          f"tokens or more, not {len(tpots)}")
    measured = percentile(tpots, 50)
    bare = Settings(models=[ModelSettings(name=model, sim=base)], auth=AuthSettings(mode="open"))  # no quota
    engine = base
    for _ in range(ROUNDS):
        result = replay(bare, trace, replicas=1, engine=engine, model=model)
        predicted = [o.tpot_s for o in result.outcomes if o.status == 200 and o.tpot_s]
        if not predicted:
            raise ConfigError(f"{results}: the replay of the calibration run served no streamed request")
        engine = engine.model_copy(update={"speed": engine.speed * percentile(predicted, 50) / measured})
    return engine


def from_vllm_metrics(base: SimSettings, text: str, *, batch: float | None = None) -> SimSettings:
    names = facts_for("vllm").metrics
    values = _samples(text)

    def need(name: str) -> float:
        if name not in values:
            raise ConfigError(f"calibration from metrics needs {name} (vLLM's /metrics)")
        return values[name]

    if names.itl is None:
        raise ConfigError("the vllm dialect names no inter-token latency metric to calibrate from")
    tpot = need(names.itl + "_sum") / need(names.itl + "_count")
    requests = need(names.ttft + "_count")
    ttft = need(names.ttft + "_sum") / requests
    prompt = need(names.prompt_tokens + "_total") / requests
    running = batch if batch is not None else need(names.running[0])
    return calibrated(base, tpot_s=tpot, batch=max(1.0, running), prefill_ttft_s=ttft, prompt_tokens=prompt)


def _samples(text: str) -> dict[str, float]:
    """Each metric's value summed over its label sets (replicas, engines), from Prometheus' text format."""
    values: dict[str, float] = {}
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match is None or line.startswith("#"):
            continue
        try:
            value = float(match.group(3))
        except ValueError:
            continue
        values[match.group(1)] = values.get(match.group(1), 0.0) + value
    return values
