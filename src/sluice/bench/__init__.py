"""``sluice bench``: a load tester for OpenAI-compatible LLM servers (the gateway, an engine, anything).

Arrivals (``_arrivals``: Poisson, constant, burst), workloads (``_dists``: fixed, uniform, lognormal and presets
shaped like public chat traces; ``_plan``; ``_tenants``), the client and the load loop (``_client``, ``_runner``),
and what comes out (``_stats``, ``_report``, ``_table``, ``_progress``, ``_plots``). ``_command`` is the CLI's.

    record = await run_load(RequestShape(url, "model"), LoadSpec(Poisson(5.0), requests=100), tenants,
                            seed=0, clock=MonotonicClock())
    summary = summarize(record.results, duration_s=record.duration_s, tenants=tenants)
"""

from sluice.bench._arrivals import (
    ArrivalProcess,
    Burst,
    Constant,
    Poisson,
    arrival_times,
    fitted_gaps,
    make_arrivals,
)
from sluice.bench._client import RequestResult, RequestShape
from sluice.bench._command import bench_run_from_args, run_command
from sluice.bench._dists import PRESETS, Fixed, LengthDist, LogNormal, Uniform, parse_dist
from sluice.bench._plan import WORDS, PlannedRequest, plan
from sluice.bench._plots import write_plots
from sluice.bench._report import summarize
from sluice.bench._runner import LoadSpec, RunRecord, run_load
from sluice.bench._stats import describe, jain_index, meets_slo, percentile
from sluice.bench._table import render
from sluice.bench._tenants import Tenant, parse_tenants

__all__ = [
    "PRESETS",
    "WORDS",
    "ArrivalProcess",
    "Burst",
    "Constant",
    "Fixed",
    "LengthDist",
    "LoadSpec",
    "LogNormal",
    "PlannedRequest",
    "Poisson",
    "RequestResult",
    "RequestShape",
    "RunRecord",
    "Tenant",
    "Uniform",
    "arrival_times",
    "bench_run_from_args",
    "describe",
    "fitted_gaps",
    "jain_index",
    "make_arrivals",
    "meets_slo",
    "parse_dist",
    "parse_tenants",
    "percentile",
    "plan",
    "render",
    "run_command",
    "run_load",
    "summarize",
    "write_plots",
]
