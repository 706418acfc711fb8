"""What the launcher runs: one ``EngineCommand`` per replica (argv, port, GPUs, env), made by a ``ReplicaPlanner``
that hands each new replica the next free port and its own GPUs, and takes them back when it is removed.

    planner = ReplicaPlanner("vllm", LaunchSpec(model="/models/m", port=0, tp=2), GpuPool(visible_gpus("0,1,2,3", {})))
    planner.plan(2)        # two commands: CUDA_VISIBLE_DEVICES=0,1 and =2,3
    planner.next()         # NotEnoughGpus: all four are taken
"""

from __future__ import annotations

import dataclasses
import shlex
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal, get_args

from sluice.config import Dialect
from sluice.engines._gpus import GpuPool, VisibleGpus
from sluice.engines.dialects import LaunchSpec, dialect_for, sim_argv

Backend = Literal["vllm", "sglang", "lmdeploy", "sim"]  # an engine dialect, or the built-in simulator
BACKEND_NAMES: tuple[Backend, ...] = get_args(Backend)
SIM_DIALECT: Dialect = "vllm"  # the dialect a launched simulator speaks


@dataclass(frozen=True)
class EngineCommand:
    """One replica to run: its command line, the port it serves on, the dialect it speaks, its GPUs and the
    environment it gets on top of the gateway's (``CUDA_VISIBLE_DEVICES`` when it has GPUs)."""

    argv: tuple[str, ...]
    port: int
    dialect: Dialect
    env: Mapping[str, str] = field(default_factory=dict)
    gpus: tuple[str, ...] = ()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def shell(self) -> str:
        """The command as one shell line, its environment first: ``CUDA_VISIBLE_DEVICES=2,3 python -m …``."""
        env = [f"{k}={shlex.quote(v)}" for k, v in sorted(self.env.items())]
        return " ".join([*env, shlex.join(self.argv)])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ReplicaPlanner:
    """Makes the command of each new replica of one model: ``spec`` on a free port with its own ``tp * pp`` GPUs."""

    def __init__(self, backend: Backend, spec: LaunchSpec, gpus: GpuPool | None = None) -> None:
        if backend not in BACKEND_NAMES:
            raise KeyError(f"unknown engine backend {backend!r}: expected one of {', '.join(BACKEND_NAMES)}")
        self.backend = backend
        self.spec = spec
        self.gpus = gpus if gpus is not None else GpuPool(VisibleGpus((), "none"))
        self.dialect: Dialect = SIM_DIALECT if backend == "sim" else backend
        self.gpus_per_replica = spec.tp * spec.pp

    def plan(self, replicas: int) -> list[EngineCommand]:
        """The first ``replicas`` commands, refused at once if they cannot all have GPUs of their own."""
        self.gpus.check_fits(replicas, self.gpus_per_replica)
        return [self.next() for _ in range(replicas)]

    def next(self) -> EngineCommand:
        """One more replica: the next free port and free GPUs (``NotEnoughGpus`` when none are left). The
        simulator runs on the CPU, but takes GPUs like an engine when there are some (a rehearsal of the real
        layout: its ``CUDA_VISIBLE_DEVICES`` is set and unused)."""
        spec = dataclasses.replace(self.spec, port=free_port(), host="127.0.0.1")
        if self.backend == "sim":
            argv = tuple(sim_argv(spec, SIM_DIALECT))
        else:
            argv = tuple(dialect_for(self.backend).launch_argv(spec))
        gpus = self.gpus.take(self.gpus_per_replica)
        env = {"CUDA_VISIBLE_DEVICES": ",".join(gpus)} if gpus else {}
        return EngineCommand(argv, spec.port, self.dialect, env, gpus)

    def release(self, command: EngineCommand) -> None:
        """A removed replica's GPUs go back to the pool (its port was never held)."""
        self.gpus.give_back(command.gpus)


def plan_commands(backend: Backend, spec: LaunchSpec, replicas: int,
                  gpus: GpuPool | None = None) -> list[EngineCommand]:
    """The command lines for ``replicas`` replicas of ``spec``, each on its own free port (and GPUs)."""
    return ReplicaPlanner(backend, spec, gpus).plan(replicas)

