"""Actuators: what carries a scaling decision out. One small Protocol; each failure is a ``ScaleActionError``
(foreign exceptions translated here, once).

- ``FleetActuator``: the replicas Sluice launched, through a ``ReplicaFleet`` (adds a replica and returns its URL
  once healthy; removes one by draining it, then stopping it). Its new replicas join the pool's replica set.
- ``CommandActuator``: an operator's command (argv, no shell) with the decision as JSON on stdin and
  ``SLUICE_MODEL``/``SLUICE_REPLICAS`` in its environment, killed past ``timeout_s``; a non-zero exit fails.
- ``WebhookActuator``: POSTs the decision as JSON; an answer other than 2xx fails.
- ``KubernetesActuator`` (``_kubernetes.py``): PATCHes a Deployment's or StatefulSet's scale subresource.

External actuators' new replicas reach the gateway through discovery (DNS), not through the autoscaler.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Mapping, Sequence
from typing import Protocol

import aiohttp
import orjson

from sluice.errors import ScaleActionError
from sluice.gateway.autoscale._policy import Decision


class Actuator(Protocol):
    kind: str  # "launcher", "command", "webhook", "kubernetes": for logs, metrics and the snapshot

    async def scale_to(self, decision: Decision) -> None:
        """Bring ``decision.model`` to ``decision.to_replicas`` replicas (or ask for it). Raises
        ``ScaleActionError``."""
        ...

    def replicas(self) -> int | None:
        """The replicas it manages now (starting ones included), or None when it cannot tell (external: the
        ready replicas of the pool count instead)."""
        ...


class ReplicaFleet(Protocol):
    """The launched replicas of one model (the launcher and the live replica set behind it)."""

    def replicas(self) -> int: ...

    async def add(self) -> str:
        """Start one replica; its URL once it is healthy (and in the pool's replica set)."""
        ...

    async def remove(self) -> None:
        """Drain one replica (no new requests, its streams finish), then stop it."""
        ...


class FleetActuator:
    kind = "launcher"

    def __init__(self, fleet: ReplicaFleet) -> None:
        self._fleet = fleet

    def replicas(self) -> int:
        return self._fleet.replicas()

    async def scale_to(self, decision: Decision) -> None:
        missing = decision.to_replicas - self._fleet.replicas()
        try:
            # started together (each takes minutes to load its weights); all finish before a failure is raised
            started = await asyncio.gather(*(self._fleet.add() for _ in range(missing)), return_exceptions=True)
            failed = [r for r in started if isinstance(r, BaseException)]
            if failed:
                raise failed[0]
            for _ in range(-missing):
                await self._fleet.remove()
        except ScaleActionError:
            raise
        except Exception as exc:  # noqa: BLE001 - the fleet's own errors (launch, drain) become one kind here
            raise ScaleActionError(f"launcher: {type(exc).__name__}: {exc}") from exc


class CommandActuator:
    kind = "command"

    def __init__(self, argv: Sequence[str], timeout_s: float, env: Mapping[str, str] | None = None) -> None:
        self._argv = list(argv)
        self._timeout_s = timeout_s
        self._env = dict(os.environ if env is None else env)

    def replicas(self) -> None:
        return None

    async def scale_to(self, decision: Decision) -> None:
        env = {**self._env, "SLUICE_MODEL": decision.model, "SLUICE_REPLICAS": str(decision.to_replicas)}
        try:
            proc = await asyncio.create_subprocess_exec(
                *self._argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE, env=env)
        except OSError as exc:
            raise ScaleActionError(f"command {self._argv[0]!r} could not start: {exc}") from exc
        try:
            async with asyncio.timeout(self._timeout_s):
                _, stderr = await proc.communicate(orjson.dumps(decision.payload()))
        except TimeoutError as exc:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            raise ScaleActionError(f"command {self._argv[0]!r} did not finish within {self._timeout_s:g} s") from exc
        if proc.returncode != 0:
            tail = stderr.decode(errors="replace").strip()[-300:]
            raise ScaleActionError(f"command {self._argv[0]!r} exited {proc.returncode}: {tail}")


class WebhookActuator:
    kind = "webhook"

    def __init__(self, url: str, timeout_s: float) -> None:
        self._url = url
        self._timeout_s = timeout_s

    def replicas(self) -> None:
        return None

    async def scale_to(self, decision: Decision) -> None:
        timeout = aiohttp.ClientTimeout(total=self._timeout_s)
        try:
            async with aiohttp.ClientSession(timeout=timeout) as http, http.post(
                    self._url, data=orjson.dumps(decision.payload()),
                    headers={"content-type": "application/json"}) as answer:
                if answer.status // 100 != 2:
                    raise ScaleActionError(f"webhook answered {answer.status}")
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise ScaleActionError(f"webhook failed: {type(exc).__name__}: {exc}") from exc
