"""What every engine dialect declares: probes, load metric names, priority convention, launch argv, overload.

A dialect is data plus a few pure functions; nothing here talks to the network or starts processes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sluice.config import Dialect


@dataclass(frozen=True)
class LaunchSpec:
    """How to start one engine replica, in neutral terms; each dialect turns it into its own argv."""

    model: str
    port: int
    host: str = "127.0.0.1"
    tp: int = 1
    gpu_memory_utilization: float | None = None  # fraction of accelerator memory the engine may take (KV cache)
    max_model_len: int | None = None
    served_model_name: str | None = None
    extra_args: tuple[str, ...] = ()
    python: str = "python"  # the interpreter of the engine's environment (often its own venv)


@dataclass(frozen=True)
class MetricNames:
    """Gauge names read for load; each a tuple tried in order (the first one present wins), so a renamed
    metric keeps working with older engines."""

    running: tuple[str, ...]
    waiting: tuple[str, ...]
    kv_usage: tuple[str, ...]


@dataclass(frozen=True)
class PriorityConvention:
    """How an engine takes a request's priority. ``higher_first`` None: the engine takes none (strip it)."""

    field: str = "priority"
    higher_first: bool | None = None
    needs_flag: str | None = None  # the engine flag without which the field is rejected or ignored

    def fields(self, priority: int, *, scheduling_enabled: bool) -> dict[str, int]:
        """Sluice's priority (higher = more important, negative = sheddable) as the engine's body fields."""
        if self.higher_first is None or not scheduling_enabled:
            return {}
        return {self.field: priority if self.higher_first else -priority}

    def apply(self, doc: Mapping[str, Any], priority: int, *, scheduling_enabled: bool) -> dict[str, Any]:
        """A copy of the request body with the client's own priority field replaced by the mapped one (or
        removed, where the engine would reject or misread it)."""
        out = {k: v for k, v in doc.items() if k != self.field}
        out.update(self.fields(priority, scheduling_enabled=scheduling_enabled))
        return out


@dataclass(frozen=True)
class OverloadSignature:
    """What an engine's "too busy, try later" answer looks like: its statuses, and message fragments seen in
    error bodies (including the error event some engines send inside an HTTP 200 stream)."""

    statuses: frozenset[int] = frozenset({429, 503})
    messages: tuple[str, ...] = ()

    def matches(self, status: int, message: str = "") -> bool:
        if status in self.statuses:
            return True
        lowered = message.lower()
        return any(m.lower() in lowered for m in self.messages)


@dataclass(frozen=True)
class EngineDialect:
    name: Dialect
    health_path: str  # liveness: the server process answers
    ready_path: str  # readiness: the engine can serve (SGLang's runs one tiny generation)
    metrics: MetricNames
    priority: PriorityConvention
    overload: OverloadSignature
    _argv: Callable[[LaunchSpec], list[str]] = field(repr=False)
    # streams carry token ids on request (``return_token_ids``) and a completions prompt may be token ids, so a
    # stopped stream can be continued exactly (what Sluice's preemption needs)
    resumes_from_token_ids: bool = False

    def launch_argv(self, spec: LaunchSpec) -> list[str]:
        """The command line that starts this engine's OpenAI-compatible server as ``spec`` says."""
        return self._argv(spec)


def optional(flag: str, value: object | None) -> list[str]:
    """``[flag, str(value)]``, or nothing when the value is unset (the engine keeps its own default)."""
    return [] if value is None else [flag, str(value)]
