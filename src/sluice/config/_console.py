"""The console's settings (``console:`` in the configuration; docs/configuration.md, "Console"), and those of the
engines it starts at run time (``POST /admin/engines/models``)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class ConsoleSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    runs_dir: str | None = None  # where load tests are written; None: $SLUICE_RUNS_DIR, else ./sluice-runs
    keep_runs: int = Field(50, ge=1, le=10_000)  # runs kept in runs_dir; older ones are deleted as new ones end
    engine_log_dir: str = "sluice-engines"  # logs of the engines started at run time (/admin/engines/models)
    engine_python: str | None = None  # the interpreter those engines run with (their venv's); None: the gateway's
    engine_timeout_s: float = Field(900.0, gt=0)  # how long their replicas may take to become healthy
