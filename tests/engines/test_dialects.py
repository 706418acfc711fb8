"""Each dialect's probes, priority convention, launch argv and overload signature."""

from __future__ import annotations

import dataclasses

import aiohttp
import pytest

from sluice.config import SimSettings
from sluice.engines.dialects import LMDEPLOY, SGLANG, VLLM, LaunchSpec, dialect_for
from sluice.sim import SimServer

SPEC = LaunchSpec(model="/models/m", port=9000, host="0.0.0.0", tp=2, gpu_memory_utilization=0.8,
                  max_model_len=4096, served_model_name="m", extra_args=("--seed", "1"), python="/venv/bin/python")


def flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def test_vllm_argv() -> None:
    argv = VLLM.launch_argv(SPEC)
    assert argv[:3] == ["/venv/bin/python", "-m", "vllm.entrypoints.openai.api_server"]
    assert flag(argv, "--model") == "/models/m" and flag(argv, "--port") == "9000"
    assert flag(argv, "--host") == "0.0.0.0" and flag(argv, "--tensor-parallel-size") == "2"
    assert flag(argv, "--gpu-memory-utilization") == "0.8" and flag(argv, "--max-model-len") == "4096"
    assert flag(argv, "--served-model-name") == "m" and argv[-2:] == ["--seed", "1"]


def test_sglang_argv() -> None:
    argv = SGLANG.launch_argv(SPEC)
    assert argv[:3] == ["/venv/bin/python", "-m", "sglang.launch_server"]
    assert flag(argv, "--model-path") == "/models/m" and flag(argv, "--port") == "9000"
    assert flag(argv, "--tp-size") == "2" and flag(argv, "--mem-fraction-static") == "0.8"
    assert flag(argv, "--context-length") == "4096" and "--enable-metrics" in argv


def test_lmdeploy_argv() -> None:
    argv = LMDEPLOY.launch_argv(dataclasses.replace(SPEC, gpu_memory_utilization=None))
    assert argv[:4] == ["/venv/bin/lmdeploy", "serve", "api_server", "/models/m"]
    assert flag(argv, "--server-port") == "9000" and flag(argv, "--server-name") == "0.0.0.0"
    assert flag(argv, "--tp") == "2" and "--cache-max-entry-count" not in argv  # free memory, not all: refused
    assert flag(argv, "--session-len") == "4096" and flag(argv, "--model-name") == "m"
    assert "--enable-metrics" not in argv  # gone from LMDeploy (metrics on by default)
    assert LMDEPLOY.launch_argv(LaunchSpec(model="m", port=1))[0] == "lmdeploy"


def test_unset_options_keep_the_engines_defaults() -> None:
    argv = VLLM.launch_argv(LaunchSpec(model="m", port=1))
    assert "--gpu-memory-utilization" not in argv and "--max-model-len" not in argv


@pytest.mark.parametrize("priority", [10, 0, -5])
def test_priority_conventions(priority: int) -> None:
    body = {"model": "m", "priority": 99}
    assert VLLM.priority.apply(body, priority, scheduling_enabled=True) == {"model": "m", "priority": -priority}
    assert SGLANG.priority.apply(body, priority, scheduling_enabled=True) == {"model": "m", "priority": priority}
    for dialect in (VLLM, SGLANG, LMDEPLOY):  # the engine would reject or misread it: stripped
        assert dialect.priority.apply(body, priority, scheduling_enabled=False) == {"model": "m"}
    assert LMDEPLOY.priority.apply(body, priority, scheduling_enabled=True) == {"model": "m"}
    assert body == {"model": "m", "priority": 99}


def test_more_important_runs_first_in_each_engines_terms() -> None:
    vip, batch = 10, -1
    v = lambda p: VLLM.priority.fields(p, scheduling_enabled=True)["priority"]  # noqa: E731
    s = lambda p: SGLANG.priority.fields(p, scheduling_enabled=True)["priority"]  # noqa: E731
    assert v(vip) < v(batch)  # vLLM: lower first
    assert s(vip) > s(batch)  # SGLang: higher first


def test_overload_signatures() -> None:
    assert SGLANG.overload.matches(200, "The request queue is full.")
    assert SGLANG.overload.matches(503)
    assert VLLM.overload.matches(429) and not VLLM.overload.matches(400, "prompt too long")


def test_unknown_dialect() -> None:
    assert dialect_for("vllm") is VLLM
    with pytest.raises(KeyError, match="unknown engine dialect"):
        dialect_for("tgi")  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["vllm", "sglang", "lmdeploy"])
async def test_probe_paths_answer_on_the_simulator(name: str) -> None:
    dialect = dialect_for(name)  # type: ignore[arg-type]
    settings = SimSettings(dialect=name, speed=1e6)  # type: ignore[arg-type]
    async with await SimServer.start(settings, model_name="m") as sim:  # real time: /health_generate generates
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
            for path in {dialect.health_path, dialect.ready_path}:
                async with http.get(sim.url + path) as resp:
                    assert resp.status == 200, path
