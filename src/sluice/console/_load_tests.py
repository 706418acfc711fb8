"""Load tests started from the console: ``sluice bench``'s own engine (``run_load``, ``summarize``, ``render``) run
as a task on the gateway's event loop against the gateway itself, one at a time, watched live, stoppable; the last
``MAX_KEPT`` results kept in memory, side by side.

A finished or stopped run is written, as ``sluice bench --out`` writes it (results.jsonl, summary.json, the plots),
to ``<runs dir>/<number>-<UTC time>/``: ``console.runs_dir``, else ``$SLUICE_RUNS_DIR``, else ``./sluice-runs``.
The runs there are read back when the console starts (numbers go on after the highest), so results outlive a
restart and compare run against run (``compare``). Only the last ``console.keep_runs`` runs stay there: each run
written deletes the oldest beyond that (only directories this module wrote: ``<number>-<stamp>`` with a summary).

Gateway workers share that directory (``_run_files``): numbers are claimed there, a run's progress is written there
every second, so any worker lists every run, reads any ended one, and stops a running one (by asking its worker).

The run's API key (when the gateway wants one) is used for the run and kept nowhere else: a run's description
says only whether it had one. The load generator shares the gateway's process and CPU: for numbers to publish,
run ``sluice bench`` from another machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import time
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from sluice.bench import (
    LoadSpec,
    RequestResult,
    RequestShape,
    make_arrivals,
    parse_dist,
    parse_tenants,
    render,
    run_load,
    summarize,
    write_plots,
)
from sluice.clock import Clock
from sluice.console._run_files import RunFiles
from sluice.errors import InvalidRequestError

log = logging.getLogger("sluice")

MAX_KEPT = 20
RUNS_DIR_ENV = "SLUICE_RUNS_DIR"
DEFAULT_RUNS_DIR = "sluice-runs"
DEFAULT_KEEP_RUNS = 50
PROGRESS_S = 1.0  # a running run's progress written for the other workers, and their stop request looked for
# compare's key figures: (name, path in the summary)
KEY_FIGURES = (("output_tokens_per_s", ("throughput", "output_tokens_per_s")),
               ("requests_per_s", ("throughput", "requests_per_s")),
               ("goodput_requests_per_s", ("goodput", "requests_per_s")),
               ("ttft_p50_ms", ("latency_ms", "ttft", "p50")), ("ttft_p99_ms", ("latency_ms", "ttft", "p99")),
               ("tpot_p50_ms", ("latency_ms", "tpot", "p50")), ("tpot_p99_ms", ("latency_ms", "tpot", "p99")),
               ("rejected", ("requests", "rejected")), ("rejection_rate", ("requests", "rejection_rate")))


class LoadTestSpec(BaseModel):
    """What the console's form sends (``POST /console/api/loadtests``)."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1)
    rate_per_s: float | None = Field(None, gt=0, le=10_000)  # open loop (Poisson); else a closed loop
    concurrency: int | None = Field(None, ge=1, le=1024)
    duration_s: float = Field(30.0, gt=0, le=3600)
    input_len: str = "sharegpt"
    output_len: str = "sharegpt"
    stream: bool = True
    tenants: str | None = None  # sluice bench's --tenants inline form
    api_key: str | None = None
    slo_ttft_s: float | None = Field(None, gt=0)
    slo_tpot_s: float | None = Field(None, gt=0)


class LoadTest:
    def __init__(self, number: int, spec: LoadTestSpec, started_s: float) -> None:
        self.number = number
        self.spec = spec
        self.started_s = started_s
        self.results: list[RequestResult] = []
        self.state = "running"
        self.summary: dict[str, Any] | None = None
        self.table = ""
        self.task: asyncio.Task[None] | None = None
        self.has_key = spec.api_key is not None
        self.dir: Path | None = None  # where it was written, once it ended
        self.plots: list[str] = []  # its plots' file names in ``dir``

    def describe(self, now_s: float) -> dict[str, Any]:
        done = self.results
        if self.summary is not None:  # a run read back from disk has its summary, not its results in memory
            requests = self.summary["requests"]
            progress = {"done": requests["sent"], "ok": requests["succeeded"], "rejected": requests["rejected"]}
        else:
            progress = {"done": len(done), "ok": sum(r.ok for r in done), "rejected": sum(r.rejected for r in done)}
        return {"id": self.number, "state": self.state,
                "settings": {**self.spec.model_dump(exclude={"api_key"}), "has_key": self.has_key},
                "elapsed_s": round(now_s - self.started_s, 3) if self.state == "running" else None,
                "progress": progress, "summary": self.summary, "table": self.table, "plots": self.plots,
                "dir": None if self.dir is None else self.dir.name}

    def figures(self) -> dict[str, float | None]:
        """compare's key figures of this run (None where it has none, e.g. no TTFT without a success)."""
        figures: dict[str, float | None] = {}
        for name, path in KEY_FIGURES:
            value: Any = self.summary
            for key in path:
                value = value.get(key) if isinstance(value, Mapping) else None
            figures[name] = float(value) if isinstance(value, int | float) else None
        return figures


class LoadTests:
    def __init__(self, clock: Clock, runs_dir: Path | None = None, *, keep_runs: int = DEFAULT_KEEP_RUNS) -> None:
        """``runs_dir``: the console's setting (None: ``$SLUICE_RUNS_DIR``, else ``./sluice-runs``); ``keep_runs``:
        how many runs stay there."""
        self._clock = clock
        self._runs: deque[LoadTest] = deque(maxlen=MAX_KEPT)
        self.runs_dir = runs_dir or Path(os.environ.get(RUNS_DIR_ENV) or DEFAULT_RUNS_DIR)
        self._files = RunFiles(self.runs_dir, clock, keep_runs)
        kept = _read_runs(self._files.ended(), clock.now())
        self._runs.extend(kept[-MAX_KEPT:])
        self._numbers = itertools.count(max((run.number for run in kept), default=0) + 1)

    def list(self) -> list[dict[str, Any]]:
        """Every run, newest first: this process's, those other workers ended, those they run now."""
        self._adopt_ended()
        now = self._clock.now()
        mine = [run.describe(now) for run in self._runs]
        others = self._files.running_elsewhere({run.number for run in self._runs})
        return sorted(mine + others, key=lambda doc: int(doc["id"]), reverse=True)

    def start(self, spec: LoadTestSpec, base_url: str) -> dict[str, Any]:
        running_here = any(run.state == "running" for run in self._runs)
        if running_here or self._files.running_elsewhere({run.number for run in self._runs}):
            raise InvalidRequestError("A load test is running already: stop it first.", status=409,
                                      code="load_test_running")
        try:
            input_len, output_len = parse_dist(spec.input_len, "input"), parse_dist(spec.output_len, "output")
            tenants = parse_tenants(spec.tenants, input_len=input_len, output_len=output_len, api_key=spec.api_key,
                                    env={})
            arrivals = None if spec.rate_per_s is None else make_arrivals("poisson", spec.rate_per_s)
            concurrency = spec.concurrency if spec.concurrency or arrivals else 8
            load = LoadSpec(arrivals, concurrency, None, spec.duration_s, drain_timeout_s=10.0)
        except ValueError as exc:
            raise InvalidRequestError(f"Invalid load test: {exc}") from exc
        run = LoadTest(self._files.claim_number(next(self._numbers)), spec, self._clock.now())
        shape = RequestShape(base_url, spec.model, "chat", spec.stream, True, 60.0)
        run.task = asyncio.get_running_loop().create_task(self._run(run, shape, load, tenants))
        self._runs.append(run)
        return run.describe(self._clock.now())

    def find(self, number: int) -> LoadTest:
        run = next((r for r in self._runs if r.number == number), None)
        if run is None and self._adopt_ended():  # ended by another worker since
            run = next((r for r in self._runs if r.number == number), None)
        if run is None:
            raise InvalidRequestError(f"No load test {number}.", status=404, code="load_test_not_found")
        return run

    def plot(self, number: int, name: str) -> bytes:
        """A plot of a run, by its name in the run's own list (never a path from the client)."""
        run = self.find(number)
        if name not in run.plots or run.dir is None:
            raise InvalidRequestError(f"Load test {number} has no plot {name!r}.", status=404,
                                      code="plot_not_found", param="name")
        try:
            return (run.dir / name).read_bytes()
        except OSError as exc:
            raise InvalidRequestError(f"The plot {name!r} of load test {number} is gone from disk.", status=404,
                                      code="plot_not_found", param="name") from exc

    def compare(self, numbers: Sequence[int]) -> dict[str, Any]:
        """Key figures of ``numbers`` side by side, with each one's ratio to the first run's."""
        runs = [self.find(n) for n in numbers]
        if len(runs) < 2 or any(run.summary is None for run in runs):
            raise InvalidRequestError("Compare two or more ended load tests.", param="ids")
        base = runs[0].figures()
        rows = []
        for run in runs:
            figures = run.figures()
            ratios = {k: _ratio(v, base[k]) for k, v in figures.items()}
            rows.append({"id": run.number, "state": run.state, "figures": figures, "ratios": ratios})
        return {"object": "load_test_comparison", "base": runs[0].number, "runs": rows}

    async def stop(self, number: int) -> dict[str, Any]:
        elsewhere = [doc for doc in self._files.running_elsewhere({r.number for r in self._runs})
                     if doc["id"] == number]
        if elsewhere:  # another worker runs it: ask it (it looks every PROGRESS_S)
            self._files.ask_stop(number)
            return {**elsewhere[0], "state": "stopping"}
        run = self.find(number)
        if run.state == "running" and run.task is not None:
            run.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await run.task
        return run.describe(self._clock.now())

    async def _run(self, run: LoadTest, shape: RequestShape, load: LoadSpec, tenants: Any) -> None:
        reporter = asyncio.get_running_loop().create_task(self._report(run))
        try:
            await self._run_load(run, shape, load, tenants)
        finally:
            reporter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reporter
            await asyncio.to_thread(self._files.end_progress, run.number)

    async def _report(self, run: LoadTest) -> None:
        """Every PROGRESS_S while it runs: its progress written for the other workers; their stop request obeyed."""
        while True:
            try:
                self._files.write_progress(run.number, run.describe(self._clock.now()))
                stop = self._files.stop_asked(run.number)
            except OSError as exc:  # the other workers do not see it; this one still does
                log.warning("load test %d: progress not written to %s: %s", run.number, self.runs_dir, exc)
                stop = False
            if stop and run.task is not None:
                run.task.cancel()
                return
            await self._clock.sleep(PROGRESS_S)

    async def _run_load(self, run: LoadTest, shape: RequestShape, load: LoadSpec, tenants: Any) -> None:
        slo = {"slo_ttft_s": run.spec.slo_ttft_s, "slo_tpot_s": run.spec.slo_tpot_s}
        try:
            record = await run_load(shape, load, tenants, seed=run.number, clock=self._clock,
                                    on_result=run.results.append)
            ended = "finished"
            run.summary = summarize(record.results, duration_s=record.duration_s, tenants=tenants, **slo)
        except asyncio.CancelledError:
            ended = "stopped"  # what ended before the stop, summed over the time it ran
            run.summary = summarize(run.results, duration_s=max(1e-9, self._clock.now() - run.started_s),
                                    tenants=tenants, **slo)
        except Exception as exc:  # the run's own failure (a bad URL, ...): said in the console, not raised
            run.state = f"failed: {type(exc).__name__}: {exc}"
            return
        run.table = render(run.summary)
        # still "running" while written: the page stops polling at the end state and must find the plots there
        with contextlib.suppress(asyncio.CancelledError):  # a stop during the write still leaves it written
            ended = await asyncio.shield(asyncio.to_thread(self._write, run, ended, self._clock.wall()))
        run.state = ended

    def _write(self, run: LoadTest, ended: str, wall_s: float) -> str:
        """The run's directory, as ``sluice bench --out`` writes it; returns its end state, a failure to write said
        there."""
        assert run.summary is not None
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(wall_s))
        out_dir = self.runs_dir / f"{run.number}-{stamp}"
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
            with (out_dir / "results.jsonl").open("w") as f:
                for r in run.results:
                    f.write(json.dumps(r.to_json()) + "\n")
            plots = [p.name for p in write_plots(run.results, run.summary, out_dir)]
            document = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(wall_s - self._clock.now()
                                                                                  + run.started_s)),
                        "settings": run.spec.model_dump(exclude={"api_key"}),
                        "console": {"id": run.number, "state": ended, "has_key": run.has_key, "plots": plots},
                        **run.summary}
            (out_dir / "summary.json").write_text(json.dumps(document, indent=2) + "\n")
        except (OSError, ImportError) as exc:
            return f"{ended} (not written to {out_dir}: {type(exc).__name__}: {exc})"
        run.dir, run.plots = out_dir, plots
        for number in self._files.prune():
            for old in [r for r in self._runs if r.number == number and r.state != "running"]:
                self._runs.remove(old)
        return ended

    def _adopt_ended(self) -> bool:
        """Read the runs other workers ended (newer than the oldest kept here); whether there were any."""
        known = {run.number for run in self._runs}
        oldest = min(known, default=0)
        fresh = [(n, path) for n, path in self._files.ended() if n not in known and n > oldest]
        for run in _read_runs(fresh, self._clock.now()):
            self._runs.append(run)
        if fresh:
            self._runs = deque(sorted(self._runs, key=lambda r: r.number), maxlen=MAX_KEPT)
        return bool(fresh)


def _ratio(value: float | None, base: float | None) -> float | None:
    return None if value is None or not base else round(value / base, 4)


def _read_runs(ended: Sequence[tuple[int, Path]], now_s: float) -> list[LoadTest]:
    """The runs in those directories (written by earlier consoles, or other workers), oldest first; unreadable
    ones skipped."""
    runs = []
    for _, run_dir in ended:
        path = run_dir / "summary.json"
        try:
            document = json.loads(path.read_text())
            meta, settings = document.pop("console"), document.pop("settings")
            document.pop("started", None)
            run = LoadTest(int(meta["id"]), LoadTestSpec.model_validate(settings), now_s)
        except (OSError, ValueError, KeyError, TypeError):
            continue
        run.state, run.has_key, run.summary = str(meta.get("state", "finished")), bool(meta.get("has_key")), document
        run.table = render(document)
        run.dir, run.plots = path.parent, [str(p) for p in meta.get("plots", []) if "/" not in str(p)]
        runs.append(run)
    return sorted(runs, key=lambda run: run.number)
