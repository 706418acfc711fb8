"""``sluice plan``: replay a trace against a configuration and N simulated replicas, and say what would happen.

    sluice plan --trace access.log --config new.yaml --replicas 2
    sluice plan --trace sluice-bench-run/ --config new.yaml --replicas auto --slo-ttft-ms 500 --json

``--replicas auto`` (or ``A-B``) searches the smallest count whose every tier with a TTFT target meets it: it
doubles from the low end until the targets are met, then bisects, so it assumes that more replicas never hurt.
The table (or ``--json``) is for the count found (the largest tried when none meets them), with every count tried
and the replay speed: simulated seconds per wall second.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from sluice.clock import Clock, MonotonicClock
from sluice.config import Settings, SimSettings, load_settings
from sluice.errors import ConfigError
from sluice.plan._calibration import from_bench, from_vllm_metrics
from sluice.plan._replay import replay
from sluice.plan._report import SloPolicy, render_table, report
from sluice.plan._trace import Trace, read_trace

AUTO_MAX_REPLICAS = 64


@dataclass(frozen=True, slots=True)
class ReplicaRange:
    low: int
    high: int

    @classmethod
    def parse(cls, text: str) -> ReplicaRange:
        """``N``, ``A-B`` or ``auto`` (1 to ``AUTO_MAX_REPLICAS``)."""
        if text == "auto":
            return cls(1, AUTO_MAX_REPLICAS)
        try:
            low, _, high = text.partition("-")
            bounds = cls(int(low), int(high or low))
        except ValueError:
            raise ConfigError(f"--replicas: a count, a range A-B or auto, not {text!r}") from None
        if not 1 <= bounds.low <= bounds.high:
            raise ConfigError(f"--replicas: need 1 <= A <= B, not {text!r}")
        return bounds


def run_command(args: argparse.Namespace, *, clock: Clock | None = None) -> int:
    settings = load_settings(args.config)
    trace = read_trace(args.trace)
    engine, calibration = _engine(settings, args)
    slo = SloPolicy(settings, default_ttft_s=None if args.slo_ttft_ms is None else args.slo_ttft_ms / 1000,
                    attainment=args.attainment)
    span = ReplicaRange.parse(args.replicas)
    if span.low != span.high and not slo.any_target(settings.tiers):
        raise ConfigError("--replicas auto needs a TTFT target: a tier's ttft_slo_s, or --slo-ttft-ms")
    if args.model is not None and args.model not in {m.name for m in settings.models}:
        raise ConfigError(f"--model {args.model}: the config has no such model")
    doc = plan_replicas(settings, trace, span, slo, engine=engine, model=args.model, clock=clock or MonotonicClock())
    doc["calibration"] = calibration
    if args.json:
        sys.stdout.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        print(_summary_lines(doc))
        print(render_table(doc["replay"]))
    return 0


def plan_replicas(settings: Settings, trace: Trace, span: ReplicaRange, slo: SloPolicy, *,
                  engine: SimSettings | None = None, model: str | None = None, clock: Clock) -> dict[str, Any]:
    """Replay at the counts the search needs; the report of the count found, and every count tried."""
    tried: dict[int, dict[str, Any]] = {}
    speeds: list[tuple[float, float]] = []

    def attempt(n: int) -> bool:
        if n not in tried:
            started = clock.now()
            result = replay(settings, trace, replicas=n, engine=engine, model=model)
            speeds.append((result.simulated_s, clock.now() - started))
            tried[n] = report(result, span_s=trace.span_s, slo=slo)
        return bool(tried[n]["meets_slo"])

    found = _search(span, attempt)
    chosen = found if found is not None else span.high
    attempt(chosen)
    simulated, wall = sum(s for s, _ in speeds), sum(w for _, w in speeds)
    return {
        "trace": {"source": trace.source, "requests": len(trace.requests), "skipped": trace.skipped,
                  "span_s": trace.span_s},
        "replicas_needed": found if span.low != span.high else None,
        "search": [{"replicas": n, "meets_slo": tried[n]["meets_slo"]} for n in sorted(tried)],
        "replay": tried[chosen],
        "speed": {"simulated_s": simulated, "wall_s": wall,
                  "simulated_s_per_wall_s": simulated / wall if wall > 0 else None},
    }


def _search(span: ReplicaRange, meets: Callable[[int], bool]) -> int | None:
    """The smallest count in ``span`` that meets the targets (doubling, then bisecting), or None."""
    if span.low == span.high:
        return span.low if meets(span.low) else None
    failing, n = span.low - 1, span.low
    while not meets(n):
        if n == span.high:
            return None
        failing, n = n, min(span.high, max(n + 1, 2 * n))
    while n - failing > 1:
        middle = (failing + n) // 2
        if meets(middle):
            n = middle
        else:
            failing = middle
    return n


def _engine(settings: Settings, args: argparse.Namespace) -> tuple[SimSettings | None, dict[str, Any]]:
    models = [m for m in settings.models if args.model in (None, m.name)]
    base = models[0].sim if len(models) == 1 and models[0].sim is not None else SimSettings()
    if args.calibrate_bench:
        engine = from_bench(base, args.calibrate_bench)
        source = f"bench run {args.calibrate_bench}"
    elif args.calibrate_metrics:
        try:
            text = Path(args.calibrate_metrics).read_text()
        except OSError as exc:
            raise ConfigError(f"{args.calibrate_metrics}: cannot read the metrics: {exc.strerror}") from exc
        engine = from_vllm_metrics(base, text, batch=args.batch)
        source = f"vLLM metrics {args.calibrate_metrics}"
    else:
        return None, {"source": "each model's sim settings (the simulator's defaults for a real engine)"}
    fitted = {k: getattr(engine, k) for k in ("prefill_s_per_token", "decode_base_s", "decode_per_seq_s", "speed")}
    return engine, {"source": source, **fitted}


def _summary_lines(doc: dict[str, Any]) -> str:
    speed = doc["speed"]
    lines = [f"trace: {doc['trace']['requests']} requests over {doc['trace']['span_s']:.1f} s "
             f"({doc['trace']['skipped']} lines skipped); engine: {doc['calibration']['source']}"]
    if len(doc["search"]) > 1 or doc["replicas_needed"] is not None:
        tried = ", ".join(f"{t['replicas']}:{'met' if t['meets_slo'] else 'miss'}" for t in doc["search"])
        needed = doc["replicas_needed"]
        lines.append(f"replicas needed: {needed if needed is not None else 'none in range'}   (tried {tried})")
    if speed["simulated_s_per_wall_s"] is not None:
        lines.append(f"replay speed: {speed['simulated_s_per_wall_s']:.0f} simulated s per wall s")
    return "\n".join(lines)
