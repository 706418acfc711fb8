"""Traces the planner replays: a gateway's access log or a ``sluice bench`` run, read into arrival-ordered requests.

An access log line (``server.access_log_path``, one JSON object per request) gives ``at`` (Unix time of arrival),
``key_id``, ``tenant``, ``tier``, ``model``, ``stream``, ``prompt_estimate`` and ``max_tokens`` (what the gateway
priced at admission) and, for a request that ran, ``tokens_in`` and ``tokens_out`` (what it used). Lines without
``at`` (written before it was logged), for other routes than the completion endpoints, or refused before they were
priced (no model or no token counts: 400, 401, 404) are skipped and counted.

A bench run (its directory, or its ``results.jsonl``) gives per request ``start_s`` (from the start of the run),
``tenant`` (the bench tenant's name), ``input_len`` and ``output_len`` (``max_tokens``) and, for a request that ran,
``prompt_tokens`` and ``output_tokens``; ``summary.json`` beside it says the model and whether it streamed. The bench
tenant's name is taken as the caller's key id (name bench tenants after config keys to replay them under those
keys' tiers).

A request that ran generates what it generated then (``tokens_out``, ``output_tokens``); one that was refused,
``max_tokens`` (``sluice bench`` sends ``ignore_eos``, so its requests generate exactly that).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from sluice.errors import ConfigError

COMPLETION_ROUTES = frozenset({"/v1/chat/completions", "/v1/completions"})


@dataclass(frozen=True, slots=True)
class TraceRequest:
    """One recorded request, as the planner replays it. ``at_s`` is from the trace's first arrival."""

    at_s: float
    key_id: str
    tenant: str | None  # None: the config's key (or the default tenant) says
    tier: str | None  # None: the config's key (or its default tier) says
    model: str | None  # None: the config's only model
    prompt_tokens: int
    max_tokens: int
    output_tokens: int  # what it generates when it runs
    stream: bool = True


@dataclass(frozen=True, slots=True)
class Trace:
    requests: tuple[TraceRequest, ...]
    skipped: int  # lines that could not be replayed (see the module's docstring)
    source: str  # "access_log" or "bench"

    @property
    def span_s(self) -> float:
        """From the first arrival to the last."""
        return self.requests[-1].at_s if self.requests else 0.0


def read_trace(path: str | Path) -> Trace:
    """Read an access log (a ``.log``/``.jsonl`` of gateway lines) or a bench run (its directory, or its
    ``results.jsonl``); raise ``ConfigError`` when it is neither or holds no replayable request."""
    path = Path(path)
    if path.is_dir():
        path = path / "results.jsonl"
    try:
        lines = path.read_bytes().splitlines()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the trace: {exc.strerror or exc}") from exc
    rows = [_parse(path, n, line) for n, line in enumerate(lines, 1) if line.strip()]
    if not rows:
        raise ConfigError(f"{path}: the trace is empty")
    if "start_s" in rows[0]:
        trace = _from_bench(rows, _bench_summary(path.parent / "summary.json"))
    else:
        trace = _from_access_log(rows)
    if not trace.requests:
        raise ConfigError(f"{path}: no replayable request in the trace ({trace.skipped} lines skipped: an access log "
                          "needs the `at` field, written since the planner exists)")
    return trace


def _parse(path: Path, number: int, line: bytes) -> dict[str, Any]:
    try:
        row = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise ConfigError(f"{path}:{number}: not a JSON line: {exc}") from exc
    if not isinstance(row, dict):
        raise ConfigError(f"{path}:{number}: a trace line is a JSON object")
    return row


def _from_access_log(rows: Iterable[dict[str, Any]]) -> Trace:
    kept: list[tuple[float, TraceRequest]] = []
    skipped = 0
    for row in rows:
        at = row.get("at")
        prompt = row.get("tokens_in") if row.get("tokens_in") is not None else row.get("prompt_estimate")
        max_tokens = row.get("max_tokens")
        if (not isinstance(at, (int, float)) or row.get("route") not in COMPLETION_ROUTES
                or not isinstance(prompt, int) or not isinstance(max_tokens, int) or max_tokens < 1):
            skipped += 1
            continue
        ran = row.get("status") == 200 and isinstance(row.get("tokens_out"), int) and row["tokens_out"] > 0
        output = int(row["tokens_out"]) if ran else max_tokens
        kept.append((float(at), TraceRequest(0.0, str(row.get("key_id") or "anonymous"), row.get("tenant"),
                                             row.get("tier"), row.get("model"), prompt, max_tokens, output,
                                             bool(row.get("stream", False)))))
    return Trace(_rebased(kept), skipped, "access_log")


def _from_bench(rows: Iterable[dict[str, Any]], summary: dict[str, Any]) -> Trace:
    settings = summary.get("settings", {}) if isinstance(summary.get("settings"), dict) else {}
    model = settings.get("model") if isinstance(settings.get("model"), str) else None
    stream = bool(settings.get("stream", True))
    kept: list[tuple[float, TraceRequest]] = []
    skipped = 0
    for row in rows:
        try:
            at, max_tokens = float(row["start_s"]), int(row["output_len"])
            prompt = int(row.get("prompt_tokens") or row["input_len"])
        except (KeyError, TypeError, ValueError):
            skipped += 1
            continue
        ran = bool(row.get("ok")) and int(row.get("output_tokens") or 0) > 0
        output = int(row["output_tokens"]) if ran else max_tokens
        kept.append((at, TraceRequest(0.0, str(row.get("tenant") or "default"), None, None, model, prompt,
                                      max(1, max_tokens), max(1, output), stream)))
    return Trace(_rebased(kept), skipped, "bench")


def _bench_summary(path: Path) -> dict[str, Any]:
    try:
        data = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def _rebased(kept: list[tuple[float, TraceRequest]]) -> tuple[TraceRequest, ...]:
    """In arrival order (stable: equal times keep the file's order), times from the first arrival."""
    kept.sort(key=lambda pair: pair[0])
    if not kept:
        return ()
    first = kept[0][0]
    return tuple(_at(req, t - first) for t, req in kept)


def _at(req: TraceRequest, at_s: float) -> TraceRequest:
    return TraceRequest(at_s, req.key_id, req.tenant, req.tier, req.model, req.prompt_tokens, req.max_tokens,
                        req.output_tokens, req.stream)
