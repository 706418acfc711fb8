"""The launcher with real child processes (the simulator stands in for an engine here; tests/vllm starts a real
vLLM): health wait, warm-up, restart after a crash, replicas added and removed at run time with GPUs of their own,
nothing left behind; `--backend auto`, and what `sluice serve --model` plans."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from pathlib import Path

import httpx
import pytest

from sluice.cli import _launch_plan, _parser
from sluice.clock import MonotonicClock
from sluice.config import Settings, parse_settings
from sluice.engines import (
    EngineCommand,
    EngineLauncher,
    GpuPool,
    NotEnoughGpus,
    ReplicaPlanner,
    VisibleGpus,
    choose_backend,
)
from sluice.engines.dialects import LaunchSpec
from tests.conftest import process_alive, serve_gateway, wait_until
from tests.redis_server import free_port


def sim_command(port: int | None = None) -> EngineCommand:
    port = port or free_port()
    argv = (sys.executable, "-m", "sluice.cli", "sim", "--port", str(port), "--model", "m", "--speed", "100")
    return EngineCommand(argv, port, "vllm")


async def test_start_supervise_restart_and_stop(tmp_path):
    launcher = EngineLauncher([sim_command(), sim_command()], MonotonicClock(), log_dir=tmp_path,
                              health_timeout_s=60, warmup_model="m")
    await launcher.start()
    try:
        async with httpx.AsyncClient() as http:
            for url in launcher.urls:
                assert (await http.get(url + "/health")).status_code == 200
            victim = launcher._children[0]
            old_pid = victim.proc.pid
            os.killpg(old_pid, signal.SIGKILL)  # an engine crash

            async def restarted() -> bool:
                try:
                    return launcher.restarts == 1 and (await http.get(launcher.urls[0] + "/health")).status_code == 200
                except httpx.HTTPError:
                    return False

            for _ in range(200):
                if await restarted():
                    break
                await asyncio.sleep(0.1)
            assert await restarted(), "the crashed replica was not restarted"
            assert victim.proc.pid != old_pid
        pids = [c.proc.pid for c in launcher._children]
    finally:
        await launcher.stop()
    assert not any(process_alive(pid) for pid in pids), "an engine outlived the launcher"


async def test_an_engine_that_dies_while_starting_is_reported_with_its_log(tmp_path):
    broken = EngineCommand((sys.executable, "-c", "import sys; print('no GPU'); sys.exit(3)"), free_port(), "vllm")
    launcher = EngineLauncher([broken], MonotonicClock(), log_dir=tmp_path, health_timeout_s=30)
    with pytest.raises(RuntimeError, match="exited with 3") as info:
        await launcher.start()
    assert "engine-0-" in str(info.value)
    assert "no GPU" in next(tmp_path.glob("engine-0-*.log")).read_text()


def test_the_gateway_serves_the_engines_it_launched_and_stops_them(tmp_path):
    command = sim_command()
    launcher = EngineLauncher([command], MonotonicClock(), log_dir=tmp_path, health_timeout_s=60, warmup_model="m")
    settings = parse_settings({"auth": {"mode": "open"},
                               "models": [{"name": "m", "engine": {"urls": [command.url]}}]})
    with serve_gateway(settings, launcher=launcher) as gw:
        r = httpx.post(gw.url + "/v1/chat/completions",
                       json={"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
        assert r.status_code == 200
        pid = launcher._children[0].proc.pid
    assert wait_until(lambda: not process_alive(pid), timeout_s=15)


@pytest.mark.parametrize("config, backend", [
    ({"architectures": ["LlamaForCausalLM"]}, "vllm"),
    ({"architectures": ["Qwen2_5_VLForConditionalGeneration"], "vision_config": {}}, "sglang"),
    ({"architectures": ["LlavaForConditionalGeneration"]}, "sglang"),
    ({"architectures": ["Qwen3ForCausalLM"], "rope_scaling": None}, "vllm"),
])
def test_auto_backend_reads_the_architecture(tmp_path, config, backend):
    (tmp_path / "config.json").write_text(json.dumps(config))
    chosen, why, guessed = choose_backend(str(tmp_path), "auto")
    assert chosen == backend and config["architectures"][0] in why and not guessed
    assert choose_backend(str(tmp_path), "lmdeploy").backend == "lmdeploy"
    fallback = choose_backend(str(tmp_path / "missing"), "auto")
    assert fallback.backend == "vllm" and fallback.guessed and "hub id" in fallback.why


# -- replicas at run time -----------------------------------------------------------------------------------------


def sim_planner(gpus: tuple[str, ...] = (), **spec: object) -> ReplicaPlanner:
    """Launched simulators (`--backend sim`), taking one of ``gpus`` each like an engine with tp 1."""
    spec = {"model": "m", "port": 0, "served_model_name": "m", "extra_args": ("--speed", "100"), **spec}
    return ReplicaPlanner("sim", LaunchSpec(**spec), GpuPool(VisibleGpus(gpus, "--gpus")))  # type: ignore[arg-type]


def environ_of(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


async def healthy(url: str) -> bool:
    async with httpx.AsyncClient(timeout=2) as http:
        try:
            return (await http.get(url + "/health")).status_code == 200
        except httpx.HTTPError:
            return False


async def test_replicas_are_added_supervised_and_removed_at_run_time(tmp_path):
    planner = sim_planner(("0", "1", "2"))
    launcher = EngineLauncher(planner.plan(1), MonotonicClock(), log_dir=tmp_path, health_timeout_s=60,
                              warmup_model="m", planner=planner)
    await launcher.start()
    pids: list[int] = []
    try:
        first = launcher.urls[0]
        added = await launcher.add()
        assert added != first and await healthy(added)
        snap = {r["url"]: r for r in launcher.snapshot()}
        assert snap[added]["state"] == "healthy" and snap[added]["gpus"] == ["1"]
        assert environ_of(snap[added]["pid"])["CUDA_VISIBLE_DEVICES"] == "1"  # really in the engine's environment
        pids += [r["pid"] for r in snap.values()]

        os.killpg(snap[added]["pid"], signal.SIGKILL)  # the added replica crashes: supervised like the first
        for _ in range(200):
            now = {r["url"]: r for r in launcher.snapshot()}[added]
            if now["restarts"] == 1 and now["state"] == "healthy" and await healthy(added):
                break
            await asyncio.sleep(0.1)
        assert now["restarts"] == 1 and now["state"] == "healthy" and now["pid"] != snap[added]["pid"]
        pids.append(now["pid"])

        third = await launcher.add()
        with pytest.raises(NotEnoughGpus, match="needs 1 GPU"):
            await launcher.add()
        assert launcher.urls == [first, added, third]  # the refused one left nothing behind

        await launcher.remove(added)
        assert not process_alive(now["pid"]) and not await healthy(added)
        assert launcher.urls == [first, third] and added not in [r["url"] for r in launcher.snapshot()]
        again = await launcher.add()  # its GPU is free again
        assert {r["url"]: r for r in launcher.snapshot()}[again]["gpus"] == ["1"]
        pids += [r["pid"] for r in launcher.snapshot()]
    finally:
        await launcher.stop()
    assert not any(process_alive(pid) for pid in pids), "an engine outlived the launcher"
    assert launcher.snapshot() == [] and planner.gpus.free == ("0", "1", "2")


async def test_an_added_replica_that_fails_to_start_is_cleaned_up(tmp_path):
    planner = sim_planner(("0",), extra_args=("--speed", "0"))  # the simulator refuses speed 0 and exits
    launcher = EngineLauncher([], MonotonicClock(), log_dir=tmp_path, health_timeout_s=60, planner=planner)
    with pytest.raises(RuntimeError, match="exited with") as info:
        await launcher.add()
    assert "see " in str(info.value) and launcher.snapshot() == [] and planner.gpus.free == ("0",)


SIGTERM_IGNORING_ENGINE = """
import http.server, signal, sys
signal.signal(signal.SIGTERM, signal.SIG_IGN)
class Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.end_headers()
    def log_message(self, *args):
        pass
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Health).serve_forever()
"""


async def test_remove_kills_an_engine_that_ignores_sigterm_after_the_grace(tmp_path):
    port = free_port()
    stubborn = EngineCommand((sys.executable, "-c", SIGTERM_IGNORING_ENGINE, str(port)), port, "vllm")
    launcher = EngineLauncher([stubborn], MonotonicClock(), log_dir=tmp_path, health_timeout_s=30)
    await launcher.start()
    pid = launcher.snapshot()[0]["pid"]
    try:
        await launcher.remove(stubborn.url + "/", grace_s=0.5)
        assert not process_alive(pid) and launcher.urls == []
        with pytest.raises(KeyError, match="no launched replica"):
            await launcher.remove(stubborn.url)
        with pytest.raises(RuntimeError, match="no planner"):
            await launcher.add()
    finally:
        await launcher.stop()


# -- what `sluice serve --model` plans ----------------------------------------------------------------------------


def serve_args(*argv: str) -> argparse.Namespace:
    args = _parser().parse_args(["serve", *argv])
    args.engine_args = []
    return args


def test_a_launched_model_takes_its_context_length_from_config_json(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["Qwen3ForCausalLM"],
                                                      "max_position_embeddings": 40960}))
    settings, launcher = _launch_plan(serve_args("--model", str(tmp_path), "--backend", "sim", "--engine-log-dir",
                                                 str(tmp_path / "logs")), Settings.embedded(), True)
    (model,) = settings.models
    assert model.max_model_len == 40960 and launcher is not None
    assert model.engine is not None and model.engine.urls == launcher.urls
    assert (tmp_path / "logs").is_dir()  # the engines' logs go to --engine-log-dir
    settings, _ = _launch_plan(serve_args("--model", str(tmp_path), "--backend", "sim", "--max-model-len", "2048",
                                          "--engine-log-dir", str(tmp_path / "logs")), Settings.embedded(), True)
    assert settings.models[0].max_model_len == 2048  # given: kept


def test_dry_run_warns_of_a_missing_model_directory_and_a_guessed_backend(tmp_path, caplog, capsys):
    with caplog.at_level(logging.INFO, logger="sluice"):
        _launch_plan(serve_args("--model", str(tmp_path / "nowhere"), "--dry-run"), Settings.embedded(), True)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("does not exist here" in w for w in warnings)
    assert any("a guess" in w and "vLLM" in w for w in warnings)  # auto fell back, and says why, loudly
    assert "vllm.entrypoints.openai.api_server" in capsys.readouterr().out


def test_a_launched_model_keeps_the_configs_settings_for_it(tmp_path, caplog):
    config = parse_settings({"auth": {"mode": "open"}, "models": [
        {"name": "demo", "engine": {"urls": ["http://10.0.0.5:8000"], "routing": "least_kv", "max_connections": 64},
         "admission": {"window": {"kind": "aimd"}},
         "autoscale": {"actuator": "launcher", "min_replicas": 1, "max_replicas": 2}},
        {"name": "other", "engine": {"urls": ["http://10.0.0.6:8000"]}}]})
    with caplog.at_level(logging.WARNING, logger="sluice"):
        settings, launcher = _launch_plan(serve_args("--model", "demo", "--backend", "sim", "--engine-log-dir",
                                                     str(tmp_path)), config, False)
    assert launcher is not None
    demo = next(m for m in settings.models if m.name == "demo")
    assert demo.engine is not None and demo.engine.urls == launcher.urls  # the launched replicas, not the config's
    assert demo.engine.routing == "least_kv" and demo.engine.max_connections == 64
    assert demo.autoscale is not None and demo.autoscale.max_replicas == 2
    assert demo.admission.window.kind == "aimd"
    assert [m.name for m in settings.models] == ["other", "demo"]
    assert any("replace the config's engine urls" in r.getMessage() for r in caplog.records)


def test_autoscaling_launched_replicas_is_refused_with_several_workers(tmp_path, capsys):
    from sluice.cli import main

    config = tmp_path / "sluice.yaml"
    config.write_text(json.dumps({"state": "redis://127.0.0.1:1/0", "auth": {"mode": "open"}, "models": [
        {"name": "demo", "engine": {"urls": ["http://10.0.0.5:8000"]},
         "autoscale": {"actuator": "launcher", "max_replicas": 2}}]}))
    code = main(["serve", "--config", str(config), "--workers", "2", "--model", "demo", "--backend", "sim",
                 "--engine-log-dir", str(tmp_path / "logs")])
    assert code == 2
    assert "autoscale actuator launcher needs one gateway process" in capsys.readouterr().err
