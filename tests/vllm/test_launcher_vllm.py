"""The launcher starting and stopping a real vLLM: health wait, warm-up, served through the gateway, nothing left."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import httpx
import pytest

from sluice.clock import MonotonicClock
from sluice.config import parse_settings
from sluice.engines import EngineLauncher, plan_commands
from sluice.engines.dialects import LaunchSpec
from tests.conftest import process_alive, serve_gateway, wait_until
from tests.vllm.engine_process import ENGINE_ENV

pytestmark = pytest.mark.vllm


def test_the_launcher_starts_serves_and_stops_a_real_vllm(vllm_python: str, tiny_model: Path, tmp_path: Path):
    spec = LaunchSpec(model=str(tiny_model), port=0, max_model_len=1024, served_model_name="tiny",
                      extra_args=("--enforce-eager",), python=vllm_python)
    commands = [dataclasses.replace(c, env=ENGINE_ENV) for c in plan_commands("vllm", spec, 1)]
    launcher = EngineLauncher(commands, MonotonicClock(), log_dir=tmp_path, health_timeout_s=300,
                              warmup_model="tiny")
    settings = parse_settings({"auth": {"mode": "open"},
                               "models": [{"name": "tiny", "engine": {"urls": [c.url for c in commands]}}]})
    with serve_gateway(settings, launcher=launcher, start_timeout_s=330) as gw:
        r = httpx.post(gw.url + "/v1/chat/completions", timeout=120,
                       json={"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4})
        assert r.status_code == 200, r.text
        assert r.json()["usage"]["completion_tokens"] <= 4
        pid = launcher._children[0].proc.pid
    assert wait_until(lambda: not process_alive(pid), timeout_s=30), "vLLM outlived the gateway that launched it"
