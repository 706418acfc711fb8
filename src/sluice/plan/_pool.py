"""One model's pool in the replay: N simulated replicas, the router's choice among them, and the gate in front.

The gate is the admission package's own ``Gate``, assembled from the model's ``admission`` settings by the recipe
the gateway uses (``admission.assemble_gate``: the window, fixed or learnt per replica, capped by
``engine.max_connections``; saturation and KV room from the replicas' load; protection mode; preemption). The
replicas' load is read as the gateway's scraper reads it, every ``saturation.scrape_interval_s`` (here: on demand,
at most that stale).
Routing: ``least_kv`` picks the replica with the lowest KV use, anything else the one with the fewest requests in
flight (``prefix_affinity`` is not modelled: a trace has no prompts), the lowest index among equals.
"""

from __future__ import annotations

from collections.abc import Sequence

from sluice.admission import Gate, LoadReading, PoolView, assemble_gate
from sluice.config import EngineSettings, ModelSettings, Settings, SimSettings
from sluice.plan._replica import SimReplica
from sluice.plan._virtual_time import VirtualClock


class SimulatedPool:
    def __init__(self, model: ModelSettings, settings: Settings, engine: SimSettings, replicas: int,
                 clock: VirtualClock) -> None:
        self.name = model.name
        self.model = model
        self._clock = clock
        self.replicas = [SimReplica(i, engine, clock) for i in range(replicas)]
        self._engine_settings = model.engine or EngineSettings()
        self._readings: list[LoadReading | None] = [None] * replicas
        self._read_at = -float("inf")
        self.priority_to_engine = model.admission.priority_to_engine and engine.scheduling_policy == "priority"
        self.gate = self._gate(settings, engine)

    def start(self) -> None:
        for replica in self.replicas:
            replica.start()
        if self.gate is not None:
            self.gate.start()

    async def close(self) -> None:
        if self.gate is not None:
            await self.gate.close()
        for replica in self.replicas:
            await replica.stop()

    @property
    def preempts(self) -> bool:
        """Whether the gate stops running streams for more important requests (``admission.preemption``)."""
        return self.gate is not None and self.model.admission.preemption.enabled

    def pick(self) -> SimReplica:
        if self._engine_settings.routing == "least_kv":
            return min(self.replicas, key=lambda r: (r.engine.kv_usage, r.outstanding, r.index))
        return min(self.replicas, key=lambda r: (r.outstanding, r.index))

    def tighten_for(self, priority: int) -> float:
        """Protection mode squeezes the rates of the tiers below the top (as ``ModelRoute.tighten_for``)."""
        gate = self.gate
        if gate is not None and gate.protection is not None and gate.protection.engaged \
                and priority < gate.top_priority:
            return self.model.admission.protection.tighten_factor
        return 1.0

    def engine_priority(self, priority: int) -> int:
        """A request's priority in the engine's convention (lower first), when the engine gets it."""
        return -priority if self.priority_to_engine else 0

    def _load(self) -> Sequence[LoadReading | None]:
        now = self._clock.now()
        if now - self._read_at >= self.model.admission.saturation.scrape_interval_s:
            self._read_at = now
            self._readings = [LoadReading(r.engine.num_running, r.engine.num_waiting, r.engine.kv_usage, now)
                              for r in self.replicas]
        return self._readings

    def _gate(self, settings: Settings, engine: SimSettings) -> Gate | None:
        capacity = self.model.admission.kv_capacity_tokens or engine.num_kv_blocks * engine.block_size
        pool = PoolView(count=lambda: len(self.replicas), readings=self._load,
                        max_connections=self._engine_settings.max_connections, kv_capacity_tokens=capacity)
        return assemble_gate(self.model, settings, self._clock, pool)
