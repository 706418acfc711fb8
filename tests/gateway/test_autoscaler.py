"""The autoscaler on an injected clock: it scales up under sustained refusals or saturation (not on a blip), down
after a calm window (not before), within its bounds, with cooldowns, hysteresis and one decision in progress at a
time; a failing actuator is logged and retried after the cooldown. Then each actuator for real (a command, a
webhook server, a Kubernetes API stand-in, simulator replicas as a launched fleet) and the fleet-wide lock on a
real redis-server."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from aiohttp import web
from pydantic import ValidationError

from sluice.clock import FakeClock
from sluice.config import (
    AuthSettings,
    AutoscaleSettings,
    KubernetesScaleSettings,
    ModelSettings,
    ScaleOutSettings,
    Settings,
)
from sluice.config import SimSettings as SimConfig
from sluice.errors import ScaleActionError
from sluice.gateway.autoscale import (
    Autoscaler,
    CommandActuator,
    Decision,
    Evidence,
    FleetActuator,
    KubernetesActuator,
    LocalLock,
    RedisLock,
    Signals,
    WebhookActuator,
    autoscale_settings,
    build_autoscalers,
    lock_for,
)
from sluice.sim import SimServer
from sluice.state import MemoryState, RedisState
from sluice.telemetry import GatewayMetrics
from sluice.telemetry._record import RequestRecord

CHECK_S = 5.0


def settings(**overrides: Any) -> AutoscaleSettings:
    base: dict[str, Any] = {"actuator": "webhook", "webhook": "http://127.0.0.1:1/", "min_replicas": 1,
                            "max_replicas": 4, "check_s": CHECK_S, "window_s": 60, "refusal_ratio": 0.05,
                            "min_requests": 20, "scale_up_saturation": 1.0, "scale_down_saturation": 0.3,
                            "scale_down_window_s": 300, "cooldown_up_s": 60, "cooldown_down_s": 600,
                            "settle_timeout_s": 300}
    return AutoscaleSettings(**{**base, **overrides})


class Pool:
    """The signals of one model: cumulative counts, saturation, ready replicas."""

    def __init__(self, ready: int = 2) -> None:
        self.answered = 0
        self.refused = 0
        self.saturation = 0.5
        self.ready = ready

    def signals(self) -> Signals:
        return Signals(counts=lambda: (self.answered, self.refused), saturation=lambda: self.saturation,
                       ready=lambda: self.ready)


class Recorder:
    """An external actuator stand-in for the policy tests: records each decision; ``follow`` makes the pool's
    ready replicas reach the target at once (as discovery would once the new replicas are up); ``fail`` raises."""

    kind = "recorder"

    def __init__(self, pool: Pool, follow: bool = True) -> None:
        self.pool = pool
        self.follow = follow
        self.fail = False
        self.calls: list[int] = []

    def replicas(self) -> None:
        return None

    async def scale_to(self, decision: Decision) -> None:
        self.calls.append(decision.to_replicas)
        if self.fail:
            raise ScaleActionError("the operator's script said no")
        if self.follow:
            self.pool.ready = decision.to_replicas


class Harness:
    def __init__(self, pool: Pool | None = None, follow: bool = True, metrics: GatewayMetrics | None = None,
                 **overrides: Any) -> None:
        self.clock = FakeClock()
        self.pool = pool or Pool()
        self.actuator = Recorder(self.pool, follow)
        self.metrics = metrics or GatewayMetrics()
        self.scaler = Autoscaler("m", settings(**overrides), self.pool.signals(), self.actuator, self.clock,
                                 observer=self.metrics)

    async def run(self, seconds: float, requests: int = 10, refused: int = 0, saturation: float | None = None
                  ) -> list[Decision]:
        """``seconds`` of traffic, sampled every check: per check ``requests`` answered, ``refused`` of them
        refused for capacity."""
        decided = []
        for _ in range(round(seconds / CHECK_S)):
            self.pool.answered += requests
            self.pool.refused += refused
            if saturation is not None:
                self.pool.saturation = saturation
            self.clock.advance(CHECK_S)
            decision = await self.scaler.check()
            if decision is not None:
                decided.append(decision)
        return decided


def sample(metrics: GatewayMetrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


async def test_sustained_refusals_scale_up_by_a_step_but_a_blip_does_not() -> None:
    h = Harness()
    assert await h.run(120, requests=20, refused=0) == []
    # a blip: 10 s of heavy refusals (a sixth of the window's requests), then none
    assert await h.run(10, requests=20, refused=20) == []
    assert await h.run(50, requests=20, refused=0) == []
    assert h.actuator.calls == []
    # sustained: 10% refused for a whole window
    decided = await h.run(60, requests=20, refused=2)
    assert [(d.from_replicas, d.to_replicas, d.direction, d.evidence.reason) for d in decided] == [
        (2, 3, "up", "refusals")]
    assert h.actuator.calls == [3]
    assert sample(h.metrics, "sluice_autoscaler_decisions_total", model="m", direction="up",
                  reason="refusals") == 1
    assert sample(h.metrics, "sluice_autoscaler_desired_replicas", model="m") == 3


async def test_refusals_below_the_ratio_or_too_few_requests_change_nothing() -> None:
    assert await Harness().run(180, requests=100, refused=4) == []  # 4%: below 5%
    assert await Harness().run(180, requests=1, refused=1) == []  # 100%, but 12 requests a window: under min_requests


async def test_a_large_refusal_share_adds_the_missing_replicas_at_once() -> None:
    h = Harness(Pool(ready=2), max_replicas=8)
    decided = await h.run(65, requests=20, refused=10)  # half refused: 2 replicas serve half the demand
    assert [d.to_replicas for d in decided] == [4]


async def test_saturation_held_for_the_window_scales_up_but_a_spike_does_not() -> None:
    h = Harness()
    assert await h.run(60, saturation=0.5) == []
    assert await h.run(30, saturation=1.5) == []  # half a window
    assert await h.run(5, saturation=0.8) == []
    decided = await h.run(70, saturation=1.5)
    assert [(d.to_replicas, d.evidence.reason) for d in decided] == [(3, "saturation")]


async def test_stale_saturation_is_no_evidence() -> None:
    h = Harness()
    assert await h.run(300, saturation=float("inf")) == []  # the engines' metrics unreadable: not load
    assert await h.run(400, saturation=float("inf")) == []  # nor calm
    json.dumps(h.scaler.snapshot(), allow_nan=False)  # the admin API's JSON has no Infinity in it


async def test_scales_down_by_one_after_a_calm_window_and_not_before() -> None:
    h = Harness(Pool(ready=3))
    assert await h.run(290, saturation=0.1) == []
    decided = await h.run(15, saturation=0.1)
    assert [(d.from_replicas, d.to_replicas, d.direction, d.evidence.reason) for d in decided] == [
        (3, 2, "down", "calm")]


async def test_a_refusal_in_the_window_is_not_calm() -> None:
    h = Harness(Pool(ready=3))
    await h.run(150, saturation=0.1)
    await h.run(5, requests=10, refused=1, saturation=0.1)  # one refused: not enough to scale up ...
    assert await h.run(250, saturation=0.1) == []  # ... and the calm window starts again after it
    assert len(await h.run(60, saturation=0.1)) == 1


async def test_between_the_thresholds_nothing_changes() -> None:
    h = Harness(Pool(ready=3))
    assert await h.run(1200, saturation=0.6) == []  # neither >= 1.0 nor < 0.3: hysteresis
    assert await h.run(1200, saturation=0.99) == []
    assert h.actuator.calls == []


async def test_cooldowns_up_short_down_long() -> None:
    h = Harness()
    assert [d.to_replicas for d in await h.run(65, saturation=1.5)] == [3]
    # the new fleet is measured afresh (a full window), and the next step up waits cooldown_up_s (60 s) anyway
    assert [d.to_replicas for d in await h.run(60, saturation=1.5)] == []
    assert [d.to_replicas for d in await h.run(10, saturation=1.5)] == [4]
    # calm at once: a step down waits cooldown_down_s (600 s) from the last decision, though the calm window
    # (300 s) is full long before
    assert await h.run(595, saturation=0.1) == []
    assert [(d.from_replicas, d.to_replicas) for d in await h.run(10, saturation=0.1)] == [(4, 3)]


async def test_never_above_max_and_at_max_it_says_so_once_per_episode(caplog: pytest.LogCaptureFixture) -> None:
    h = Harness(Pool(ready=3), max_replicas=4)
    caplog.set_level(logging.WARNING, "sluice.autoscale")
    assert [d.to_replicas for d in await h.run(65, requests=20, refused=18)] == [4]  # 90% refused: clamped to 4
    assert await h.run(600, requests=20, refused=18) == []
    at_max = [r for r in caplog.records if "at max_replicas" in r.getMessage()]
    assert len(at_max) == 1
    assert sample(h.metrics, "sluice_autoscaler_at_limit_total", model="m", limit="max") == 1
    await h.run(120, requests=20, refused=0, saturation=0.5)  # the episode ends
    await h.run(120, requests=20, refused=18)  # a new one
    assert sample(h.metrics, "sluice_autoscaler_at_limit_total", model="m", limit="max") == 2


async def test_never_below_min() -> None:
    h = Harness(Pool(ready=2), min_replicas=2)
    assert await h.run(2000, saturation=0.0) == []


async def test_a_decision_in_progress_blocks_the_next_until_reached_or_given_up(
        caplog: pytest.LogCaptureFixture) -> None:
    h = Harness(follow=False)  # the new replicas never show up
    caplog.set_level(logging.WARNING, "sluice.autoscale")
    assert [d.to_replicas for d in await h.run(65, saturation=1.5)] == [3]
    assert await h.run(290, saturation=1.5) == []  # still overloaded, but 3 not reached: in progress
    assert h.scaler.snapshot()["in_progress"]["replicas"] == 3
    await h.run(10, saturation=1.5)  # settle_timeout_s (300 s) passes: given up, and the cooldown starts
    assert any("not reached" in r.getMessage() for r in caplog.records)
    assert h.actuator.calls == [3]
    assert h.scaler.snapshot()["in_progress"] is None
    decided = await h.run(70, saturation=1.5)  # after cooldown_up_s, asked again (from what is there)
    assert [(d.from_replicas, d.to_replicas) for d in decided] == [(2, 3)]


async def test_a_failing_actuator_is_logged_and_retried_after_the_cooldown(caplog: pytest.LogCaptureFixture) -> None:
    h = Harness()
    h.actuator.fail = True
    caplog.set_level(logging.ERROR, "sluice.autoscale")
    assert len(await h.run(65, saturation=1.5)) == 1
    assert any("failed" in r.getMessage() and "the operator's script said no" in r.getMessage()
               for r in caplog.records)
    assert sample(h.metrics, "sluice_autoscaler_failures_total", model="m") == 1
    assert h.scaler.snapshot()["last_error"] == "the operator's script said no"
    assert await h.run(55, saturation=1.5) == []  # within cooldown_up_s of the failure
    h.actuator.fail = False
    assert [d.to_replicas for d in await h.run(10, saturation=1.5)] == [3]
    assert h.actuator.calls == [3, 3]
    assert h.pool.ready == 3 and h.scaler.snapshot()["last_error"] is None


async def test_the_loop_runs_on_the_clock_and_closes() -> None:
    h = Harness()
    h.pool.saturation = 1.5
    h.scaler.start()
    await h.clock.run_for(70)
    await h.scaler.close()
    assert h.actuator.calls == [3]
    snapshot = h.scaler.snapshot()
    assert snapshot["current"] == 3 and snapshot["desired"] == 3 and snapshot["last_decision"]["replicas"] == 3


async def test_engine_capacity_counts_leave_quota_refusals_out() -> None:
    metrics = GatewayMetrics()
    for status, reason in ((200, None), (503, "queue_timeout"), (503, "engine_overloaded"), (429, "quota_tokens"),
                           (400, "invalid_request")):
        metrics.request_done(RequestRecord("r", "POST", "/v1/chat/completions", 0.0, status=status, reason=reason,
                                           model="m"))
    metrics.request_done(RequestRecord("r", "GET", "/v1/models", 0.0, status=200, model="m"))
    assert metrics.engine_capacity_counts("m") == (5, 2)  # a budget spent is not a replica short
    assert metrics.engine_capacity_counts("other") == (0, 0)


# --- configuration -----------------------------------------------------------------------------------------------

def test_settings_refuse_what_cannot_work() -> None:
    with pytest.raises(ValidationError, match="needs \\['command'\\]"):
        AutoscaleSettings(actuator="command")
    with pytest.raises(ValidationError, match="launcher needs none"):
        AutoscaleSettings(actuator="launcher", webhook="http://x/")
    with pytest.raises(ValidationError, match="min_replicas is above max_replicas"):
        AutoscaleSettings(actuator="launcher", min_replicas=5, max_replicas=4)
    with pytest.raises(ValidationError, match="hysteresis"):
        AutoscaleSettings(actuator="launcher", scale_up_saturation=0.5, scale_down_saturation=0.5)


def test_the_former_scale_out_block_still_works_as_an_up_only_autoscaler(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "sluice.autoscale")
    legacy = Settings(auth=AuthSettings(mode="open"), models=[
        ModelSettings(name="a", sim=SimConfig()),
        ModelSettings(name="b", sim=SimConfig(), autoscale=settings(max_replicas=3))],
        scale_out=ScaleOutSettings(command=["true"], rejection_ratio=0.1, window_s=60, interval_s=300))
    chosen = autoscale_settings(legacy)
    assert chosen["b"].max_replicas == 3  # its own block wins
    a = chosen["a"]
    assert (a.actuator, a.command, a.refusal_ratio, a.window_s, a.settle_timeout_s) == ("command", ["true"], 0.1,
                                                                                       60, 300)
    assert a.scale_down_saturation == 0  # never down: scale_out only ever asked for more
    assert any("scale_out is deprecated" in r.getMessage() for r in caplog.records)
    scalers = build_autoscalers(legacy, {"a": Pool().signals(), "b": Pool().signals()}, FakeClock(), MemoryState())
    assert [s.model for s in scalers] == ["a", "b"]


async def test_the_former_scale_out_calls_its_command_once_per_interval_while_refusals_last(tmp_path: Path) -> None:
    """tests/ops/test_scale_out.py's scenario, on the migrated block and a real command: 4% refused calls nothing,
    6% calls once, then not again within interval_s, then again after it."""
    out = tmp_path / "payloads.jsonl"
    command = [sys.executable, "-c", f"import sys; open({str(out)!r}, 'a').write(sys.stdin.read() + '\\n')"]
    legacy = Settings(auth=AuthSettings(mode="open"), models=[ModelSettings(name="m", sim=SimConfig())],
                      scale_out=ScaleOutSettings(command=command, window_s=60, interval_s=300, check_s=5,
                                                 rejection_ratio=0.05))
    h = Harness()
    h.scaler = build_autoscalers(legacy, {"m": h.pool.signals()}, h.clock, MemoryState())[0]
    assert await h.run(120, requests=100, refused=4) == []
    sent = await h.run(120, requests=100, refused=6)
    assert len(sent) == 1 and sent[0].evidence.refusal_ratio > 0.05
    payload = json.loads(out.read_text().splitlines()[0])
    assert payload["event"] == "sluice.scale_out" and 0.05 < payload["rejection_ratio"] <= 0.06
    assert await h.run(120, requests=100, refused=6) == []  # within interval_s of the call
    assert len(await h.run(120, requests=100, refused=6)) == 1  # and again after it
    assert len(out.read_text().splitlines()) == 2


def test_a_launcher_actuator_without_launched_replicas_is_a_config_error() -> None:
    from sluice.errors import ConfigError

    config = Settings(auth=AuthSettings(mode="open"), models=[
        ModelSettings(name="a", sim=SimConfig(), autoscale=AutoscaleSettings(actuator="launcher"))])
    with pytest.raises(ConfigError, match="launcher needs replicas launched by Sluice"):
        build_autoscalers(config, {"a": Pool().signals()}, FakeClock(), MemoryState())


# --- actuators, for real ------------------------------------------------------------------------------------------

def decision(to: int = 3, model: str = "m") -> Decision:
    return Decision(model, 2, to, "up", Evidence(100, 10, 0.1, 1.2, refusing=True), 60.0, 1_750_000_000.0)


async def test_the_command_gets_the_decision_on_stdin_and_the_count_in_its_environment(tmp_path: Path) -> None:
    out = tmp_path / "seen.json"
    script = ("import json, os, sys; d = json.load(sys.stdin); e = os.environ; "
              f"open({str(out)!r}, 'w').write(json.dumps([d, e['SLUICE_REPLICAS'], e['SLUICE_MODEL']]))")
    await CommandActuator([sys.executable, "-c", script], timeout_s=30).scale_to(decision(5))
    payload, replicas, model = json.loads(out.read_text())
    assert (replicas, model) == ("5", "m")
    assert payload["replicas"] == 5 and payload["direction"] == "up" and payload["model"] == "m"
    # the former scale_out payload's fields, kept for its consumers
    assert payload["event"] == "sluice.scale_out" and payload["rejection_ratio"] == 0.1
    assert {"window_s", "requests", "rejected", "saturated_models", "saturation"} <= payload.keys()


async def test_a_failing_or_hanging_command_is_an_error_and_is_killed(tmp_path: Path) -> None:
    with pytest.raises(ScaleActionError, match="exited 3: no quota left"):
        await CommandActuator([sys.executable, "-c", "import sys; sys.stderr.write('no quota left'); sys.exit(3)"],
                              timeout_s=30).scale_to(decision())
    pid_file = tmp_path / "pid"
    hang = f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(60)"
    with pytest.raises(ScaleActionError, match="did not finish within 1 s"):
        await CommandActuator([sys.executable, "-c", hang], timeout_s=1).scale_to(decision())
    pid = int(pid_file.read_text())
    assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]
    with pytest.raises(ScaleActionError, match="could not start"):
        await CommandActuator([str(tmp_path / "missing")], timeout_s=1).scale_to(decision())


@pytest.fixture
async def api_server() -> AsyncIterator[tuple[str, list[dict[str, Any]], dict[str, Any]]]:
    """A local HTTP server that records each request and answers what ``answer`` says; it checks a PATCH to a
    scale subresource the way the Kubernetes API server would (method, path, content type, bearer token)."""
    async with serve_api() as served:
        yield served


@contextlib.asynccontextmanager
async def serve_api(tls: ssl.SSLContext | None = None
                    ) -> AsyncIterator[tuple[str, list[dict[str, Any]], dict[str, Any]]]:
    seen: list[dict[str, Any]] = []
    answer: dict[str, Any] = {"status": 200, "token": "sekret-token"}

    async def hook(request: web.Request) -> web.Response:
        seen.append({"method": request.method, "path": request.path, "body": await request.json()})
        return web.json_response({}, status=answer["status"])

    async def scale(request: web.Request) -> web.Response:
        body = await request.read()
        seen.append({"method": request.method, "path": request.path, "body": json.loads(body),
                     "content_type": request.content_type})
        if request.headers.get("authorization") != f"Bearer {answer['token']}":
            return web.json_response({"kind": "Status", "status": "Failure", "message": "Unauthorized",
                                      "code": 401}, status=401)
        if request.content_type != "application/merge-patch+json":
            return web.json_response({"kind": "Status", "message": "the body of the request was in an unknown "
                                      "format - accepted media types include: application/merge-patch+json"},
                                     status=415)
        if request.match_info["name"] != "vllm":
            return web.json_response({"kind": "Status", "message": f"deployments.apps "
                                      f"\"{request.match_info['name']}\" not found"}, status=404)
        replicas = json.loads(body)["spec"]["replicas"]
        return web.json_response({"kind": "Scale", "spec": {"replicas": replicas}}, status=200)

    app = web.Application()
    app.router.add_post("/hook", hook)
    app.router.add_route("PATCH", "/apis/apps/v1/namespaces/{ns}/{resource}/{name}/scale", scale)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls).start()
    try:
        yield f"{'https' if tls else 'http'}://127.0.0.1:{runner.addresses[0][1]}", seen, answer
    finally:
        await runner.cleanup()


async def test_the_webhook_is_posted_the_decision_and_a_non_2xx_answer_fails(api_server: Any) -> None:
    url, seen, answer = api_server
    await WebhookActuator(url + "/hook", timeout_s=5).scale_to(decision(4))
    assert seen[-1]["method"] == "POST" and seen[-1]["body"]["replicas"] == 4
    answer["status"] = 500
    with pytest.raises(ScaleActionError, match="webhook answered 500"):
        await WebhookActuator(url + "/hook", timeout_s=5).scale_to(decision(4))
    with pytest.raises(ScaleActionError, match="webhook failed"):
        await WebhookActuator("http://127.0.0.1:1/hook", timeout_s=5).scale_to(decision(4))


async def test_kubernetes_patches_the_scale_subresource_with_the_token(api_server: Any, tmp_path: Path) -> None:
    url, seen, answer = api_server
    token = tmp_path / "token"
    token.write_text("sekret-token\n")
    k8s = KubernetesScaleSettings(name="vllm", namespace="llm", api_url=url, token_file=str(token), ca_file=None)
    actuator = KubernetesActuator(k8s, timeout_s=5)
    await actuator.scale_to(decision(6))
    assert seen[-1] == {"method": "PATCH", "path": "/apis/apps/v1/namespaces/llm/deployments/vllm/scale",
                        "body": {"spec": {"replicas": 6}}, "content_type": "application/merge-patch+json"}
    sts = k8s.model_copy(update={"kind": "statefulset"})
    await KubernetesActuator(sts, timeout_s=5).scale_to(decision(2))
    assert seen[-1]["path"] == "/apis/apps/v1/namespaces/llm/statefulsets/vllm/scale"
    # the token is read at each call (the kubelet rotates it): a rotated token is used at once ...
    answer["token"] = "rotated"
    with pytest.raises(ScaleActionError, match="answered 401: Unauthorized") as refused:
        await actuator.scale_to(decision(6))
    assert "sekret" not in str(refused.value)  # ... and never shows in an error
    token.write_text("rotated")
    await actuator.scale_to(decision(7))
    assert seen[-1]["body"] == {"spec": {"replicas": 7}}
    missing = KubernetesActuator(k8s.model_copy(update={"name": "nope"}), timeout_s=5)
    with pytest.raises(ScaleActionError, match=r'404: deployments\.apps "nope" not found'):
        await missing.scale_to(decision(6))
    no_token = KubernetesActuator(k8s.model_copy(update={"token_file": str(tmp_path / "absent")}), timeout_s=5)
    with pytest.raises(ScaleActionError, match="cannot read the service account token"):
        await no_token.scale_to(decision(6))


async def test_kubernetes_over_tls_trusts_the_configured_ca_only(tmp_path: Path) -> None:
    """In a cluster the API server's certificate is signed by the cluster's CA (the service account's ca.crt):
    with that CA the PATCH goes through; with the system's CAs it is refused (no request reaches the server)."""
    cert, key = tmp_path / "apiserver.crt", tmp_path / "apiserver.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=kubernetes", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=60)
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert, key)
    token = tmp_path / "token"
    token.write_text("sekret-token")
    async with serve_api(tls) as (url, seen, _):
        k8s = KubernetesScaleSettings(name="vllm", namespace="llm", api_url=url, token_file=str(token),
                                      ca_file=str(cert))
        await KubernetesActuator(k8s, timeout_s=5).scale_to(decision(5))
        assert seen[-1]["body"] == {"spec": {"replicas": 5}}
        untrusted = KubernetesActuator(k8s.model_copy(update={"ca_file": None}), timeout_s=5)
        with pytest.raises(ScaleActionError, match=r"CERTIFICATE_VERIFY_FAILED|certificate verify failed"):
            await untrusted.scale_to(decision(6))
        assert len(seen) == 1


class SimFleet:
    """Launched replicas, for real: each one a simulated engine on its own port."""

    def __init__(self) -> None:
        self.servers: list[SimServer] = []
        self.stopped: list[str] = []

    def replicas(self) -> int:
        return len(self.servers)

    async def add(self) -> str:
        server = await SimServer.start(SimConfig(), model_name="m")
        self.servers.append(server)
        return server.url

    async def remove(self) -> None:
        server = self.servers.pop()
        await server.stop()
        self.stopped.append(server.url)

    async def close(self) -> None:
        while self.servers:
            await self.remove()


async def test_the_launcher_actuator_adds_and_removes_launched_replicas() -> None:
    import aiohttp

    fleet = SimFleet()
    pool = Pool(ready=0)
    clock = FakeClock()
    scaler = Autoscaler("m", settings(actuator="launcher", webhook=None, min_replicas=1, max_replicas=3,
                                      scale_down_window_s=60, cooldown_down_s=0),
                        Signals(counts=lambda: (pool.answered, pool.refused), saturation=lambda: pool.saturation,
                                ready=fleet.replicas), FleetActuator(fleet), clock)
    try:
        await fleet.add()
        pool.saturation = 1.5
        for _ in range(14):
            clock.advance(CHECK_S)
            await scaler.check()
        assert fleet.replicas() == 2
        async with aiohttp.ClientSession() as http:
            for server in fleet.servers:  # each one really serves
                async with http.get(server.url + "/v1/models") as r:
                    assert r.status == 200
        pool.saturation = 0.0
        for _ in range(14):
            clock.advance(CHECK_S)
            await scaler.check()
        assert fleet.replicas() == 1 and len(fleet.stopped) == 1
    finally:
        await fleet.close()


async def test_a_failing_fleet_is_a_scale_action_error() -> None:
    class Broken(SimFleet):
        async def add(self) -> str:
            raise RuntimeError("no GPU left")

    with pytest.raises(ScaleActionError, match="launcher: RuntimeError: no GPU left"):
        await FleetActuator(Broken()).scale_to(decision(3))


# --- one decision across gateways ---------------------------------------------------------------------------------

def test_memory_state_needs_no_lock() -> None:
    assert isinstance(lock_for(MemoryState(), "gw"), LocalLock)


async def test_two_gateways_on_one_redis_take_one_decision_per_cooldown(redis_server: Any) -> None:
    """Two gateways see the same overload at the same moment: one scales, the other finds the lock taken; after
    the decision settles, the cooldowns hold for both (the keys expire on Redis' own clock)."""
    client = aioredis.from_url(redis_server.url)
    await client.delete("sluice:autoscale:{fleet-m}:up", "sluice:autoscale:{fleet-m}:down")
    clock = FakeClock()
    pool = Pool()
    states = [RedisState.from_url(redis_server.url, clock, timeout_s=2, retry_s=1) for _ in range(2)]
    actuators = [Recorder(pool), Recorder(pool)]
    scalers = [Autoscaler("fleet-m", settings(cooldown_up_s=0.5, cooldown_down_s=30), pool.signals(), actuators[i],
                          clock, lock=RedisLock(states[i], f"gw-{i}")) for i in range(2)]
    try:
        pool.saturation = 1.5
        for _ in range(14):
            pool.answered += 10
            clock.advance(CHECK_S)
            await asyncio.gather(*(s.check() for s in scalers))
        assert sorted(len(a.calls) for a in actuators) == [0, 1]  # one decision, by one of them
        assert pool.ready == 3
        ttl_up, ttl_down = await client.pttl("sluice:autoscale:{fleet-m}:up"), await client.pttl(
            "sluice:autoscale:{fleet-m}:down")
        assert 0 < ttl_up <= 500 and 25_000 < ttl_down <= 30_000  # the cooldowns, from the settle, for everyone
        await asyncio.sleep(0.6)  # the up cooldown passes on Redis' clock
        for _ in range(13):
            pool.answered += 10
            clock.advance(CHECK_S)
            await asyncio.gather(*(s.check() for s in scalers))
        assert sum(len(a.calls) for a in actuators) == 2 and pool.ready == 4
        # the down key holds for 30 s: neither gateway may step down, however calm (their own cooldowns are 30 s of
        # the fake clock, so only the shared key stops the one that did not decide)
        pool.saturation = 0.0
        for _ in range(130):
            pool.answered += 10
            clock.advance(CHECK_S)
            await asyncio.gather(*(s.check() for s in scalers))
        assert pool.ready == 4
        assert await client.exists("sluice:autoscale:{fleet-m}:down") == 1
    finally:
        for state in states:
            await state.close()
        await client.aclose()


# --- in a running gateway -----------------------------------------------------------------------------------------

async def test_a_gateway_whose_engine_refuses_asks_its_webhook_for_another_replica(api_server: Any) -> None:
    """The wiring: a gateway's own refusals (admission: one request at a time, no queue, so concurrent requests get
    503 queue_full) reach its autoscaler, which POSTs an up decision for the model to the webhook."""
    import httpx

    from tests.conftest import serve_gateway

    url, seen, _ = api_server
    model = ModelSettings.model_validate({
        "name": "tiny", "sim": {"max_num_seqs": 1},
        "admission": {"window": {"kind": "fixed", "initial": 1, "max": 1}, "queue_max_requests": 0},
        "autoscale": settings(webhook=url + "/hook", check_s=0.2, window_s=1.5, min_requests=5, max_replicas=3,
                              cooldown_up_s=600)})
    config = Settings(auth=AuthSettings(mode="open"), models=[model])
    body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 20}
    statuses: list[int] = []
    with serve_gateway(config) as gw:
        async with httpx.AsyncClient(base_url=gw.url, timeout=30) as http:
            for _ in range(60):  # at most ~12 s; usually two seconds of refusals do it
                answers = await asyncio.gather(*(http.post("/v1/chat/completions", json=body) for _ in range(6)))
                statuses += [a.status_code for a in answers]
                if any(s["path"] == "/hook" for s in seen):
                    break
                await asyncio.sleep(0.1)
    assert 200 in statuses and 503 in statuses
    posted = [s["body"] for s in seen if s["path"] == "/hook"]
    assert len(posted) == 1  # one decision, then the cooldown
    assert posted[0]["model"] == "tiny" and posted[0]["direction"] == "up" and posted[0]["reason"] == "refusals"
    # most requests refused: one replica serves a small share of the demand, so it asks for max_replicas at once
    assert (posted[0]["from_replicas"], posted[0]["replicas"]) == (1, 3)


async def test_no_gateway_decides_while_redis_is_down_and_one_does_once_it_is_back(
        redis: Any, caplog: pytest.LogCaptureFixture) -> None:
    """Without the shared lock a gateway cannot know whether another one just decided: it holds back (logged once
    per outage), and decides once Redis answers again (killed and restarted for real)."""
    from sluice.clock import MonotonicClock

    caplog.set_level(logging.WARNING, "sluice.autoscale")
    state = RedisState.from_url(redis.url, MonotonicClock(), timeout_s=1, retry_s=0.1)
    h = Harness()
    h.scaler = Autoscaler("m", settings(), h.pool.signals(), h.actuator, h.clock, lock=RedisLock(state, "gw"))
    try:
        redis.kill()
        assert await h.run(200, saturation=1.5) == []
        assert h.actuator.calls == []
        held = [r for r in caplog.records if "state store is unavailable" in r.getMessage()]
        assert len(held) == 1
        redis.start()
        for _ in range(200):
            if state.available:
                break
            await asyncio.sleep(0.05)
        assert [d.to_replicas for d in await h.run(5, saturation=1.5)] == [3]
    finally:
        await state.close()
