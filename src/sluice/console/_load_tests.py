"""Load tests started from the console: ``sluice bench``'s own engine (``run_load``, ``summarize``, ``render``) run
as a task on the gateway's event loop against the gateway itself, one at a time, watched live, stoppable; the last
``MAX_KEPT`` results kept in memory, side by side.

The run's API key (when the gateway wants one) is used for the run and kept nowhere else: a run's description
says only whether it had one. The load generator shares the gateway's process and CPU: for numbers to publish,
run ``sluice bench`` from another machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections import deque
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
)
from sluice.clock import Clock
from sluice.errors import InvalidRequestError

MAX_KEPT = 20


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

    def describe(self, now_s: float) -> dict[str, Any]:
        done = self.results
        return {"id": self.number, "state": self.state,
                "settings": {**self.spec.model_dump(exclude={"api_key"}), "has_key": self.spec.api_key is not None},
                "elapsed_s": round(now_s - self.started_s, 3) if self.state == "running" else None,
                "progress": {"done": len(done), "ok": sum(r.ok for r in done),
                             "rejected": sum(r.rejected for r in done)},
                "summary": self.summary, "table": self.table}


class LoadTests:
    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._runs: deque[LoadTest] = deque(maxlen=MAX_KEPT)
        self._numbers = itertools.count(1)

    def list(self) -> list[dict[str, Any]]:
        now = self._clock.now()
        return [run.describe(now) for run in reversed(self._runs)]

    def start(self, spec: LoadTestSpec, base_url: str) -> dict[str, Any]:
        if any(run.state == "running" for run in self._runs):
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
        run = LoadTest(next(self._numbers), spec, self._clock.now())
        shape = RequestShape(base_url, spec.model, "chat", spec.stream, True, 60.0)
        run.task = asyncio.get_running_loop().create_task(self._run(run, shape, load, tenants))
        self._runs.append(run)
        return run.describe(self._clock.now())

    async def stop(self, number: int) -> dict[str, Any]:
        run = next((r for r in self._runs if r.number == number), None)
        if run is None:
            raise InvalidRequestError(f"No load test {number}.", status=404, code="load_test_not_found")
        if run.state == "running" and run.task is not None:
            run.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await run.task
        return run.describe(self._clock.now())

    async def _run(self, run: LoadTest, shape: RequestShape, load: LoadSpec, tenants: Any) -> None:
        slo = {"slo_ttft_s": run.spec.slo_ttft_s, "slo_tpot_s": run.spec.slo_tpot_s}
        try:
            record = await run_load(shape, load, tenants, seed=run.number, clock=self._clock,
                                    on_result=run.results.append)
            run.state = "finished"
            run.summary = summarize(record.results, duration_s=record.duration_s, tenants=tenants, **slo)
        except asyncio.CancelledError:
            run.state = "stopped"  # what ended before the stop, summed over the time it ran
            run.summary = summarize(run.results, duration_s=max(1e-9, self._clock.now() - run.started_s),
                                    tenants=tenants, **slo)
        except Exception as exc:  # the run's own failure (a bad URL, ...): said in the console, not raised
            run.state = f"failed: {type(exc).__name__}: {exc}"
            return
        run.table = render(run.summary)
