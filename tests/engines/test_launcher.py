"""The launcher with real child processes (the simulator stands in for an engine here; tests/vllm starts a real
vLLM): health wait, warm-up, restart after a crash, nothing left behind; and `--backend auto`."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys

import httpx
import pytest

from sluice.clock import MonotonicClock
from sluice.config import parse_settings
from sluice.engines import EngineCommand, EngineLauncher, choose_backend
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
    chosen, why = choose_backend(str(tmp_path), "auto")
    assert chosen == backend and config["architectures"][0] in why
    assert choose_backend(str(tmp_path), "lmdeploy")[0] == "lmdeploy"
    assert choose_backend(str(tmp_path / "missing"), "auto")[0] == "vllm"
