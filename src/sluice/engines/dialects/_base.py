"""A dialect as the gateway uses it: the facts of ``sluice.dialects`` and the command line that starts the engine.

Nothing here talks to the network or starts processes.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

from sluice.config import Dialect
from sluice.dialects import DialectFacts, LaunchFlags
from sluice.errors import ConfigError


@dataclass(frozen=True)
class LaunchSpec:
    """How to start one engine replica, in neutral terms; each dialect turns it into its own argv."""

    model: str
    port: int
    host: str = "127.0.0.1"
    tp: int = 1
    pp: int = 1  # pipeline parallel size: a replica takes tp * pp GPUs
    gpu_memory_utilization: float | None = None  # fraction of accelerator memory the engine may take (KV cache)
    max_model_len: int | None = None
    served_model_name: str | None = None
    extra_args: tuple[str, ...] = ()
    python: str = "python"  # the interpreter of the engine's environment (often its own venv)


@dataclass(frozen=True)
class EngineDialect(DialectFacts):
    """One engine dialect's facts (``sluice.dialects``: probes, load metrics, priority convention, overload), and
    the command line that launches it."""

    @classmethod
    def of(cls, facts: DialectFacts) -> EngineDialect:
        return cls(**{f.name: getattr(facts, f.name) for f in fields(facts)})

    def launch_argv(self, spec: LaunchSpec) -> list[str]:
        """The command line that starts this engine's OpenAI-compatible server as ``spec`` says."""
        return launch_argv(self.flags, spec)


def launch_argv(flags: LaunchFlags, spec: LaunchSpec) -> list[str]:
    """``spec`` in the flags of one engine: its entry point, the model, where it listens, then what is set.
    A setting the engine has no flag for is refused (``ConfigError``), never passed under another meaning."""
    if flags.module is not None:
        entry = [spec.python, "-m", flags.module, *flags.subcommand]
    else:  # a console script of the interpreter's environment (no ``python -m`` entry point)
        script, *subcommand = flags.script
        entry = [str(Path(spec.python).with_name(script)) if "/" in spec.python else script, *subcommand]
    model = [spec.model] if flags.model is None else [flags.model, spec.model]
    return [
        *entry, *model,
        flags.host, spec.host,
        flags.port, str(spec.port),
        flags.tp, str(spec.tp),
        *supported(flags, "pp", flags.pp, spec.pp if spec.pp != 1 else None),
        *supported(flags, "gpu_memory_utilization", flags.memory_fraction, spec.gpu_memory_utilization),
        *optional(flags.max_model_len, spec.max_model_len),
        *optional(flags.served_model_name, spec.served_model_name),
        *flags.always,
        *spec.extra_args,
    ]


def supported(flags: LaunchFlags, setting: str, flag: str | None, value: object | None) -> list[str]:
    """``optional(flag, value)`` where the engine has the flag; a value it has none for is refused."""
    if value is None:
        return []
    if flag is None:
        why = dict(flags.refusals).get(setting, "the engine has no flag for it")
        raise ConfigError(f"{setting.replace('_', '-')} {value} cannot be passed: {why}")
    return [flag, str(value)]


def optional(flag: str, value: object | None) -> list[str]:
    """``[flag, str(value)]``, or nothing when the value is unset (the engine keeps its own default)."""
    return [] if value is None else [flag, str(value)]


def sim_argv(spec: LaunchSpec, dialect: Dialect) -> list[str]:
    """The built-in simulator as a launched engine (``sluice sim``): a cheap real server speaking ``dialect``,
    for demos and tests of launching. It has no GPUs, tp or memory fraction; the served name is its model."""
    return [
        spec.python, "-m", "sluice.cli", "sim", "--dialect", dialect, "--host", spec.host, "--port", str(spec.port),
        "--model", spec.served_model_name or spec.model,
        *optional("--max-model-len", spec.max_model_len),
        *spec.extra_args,
    ]
