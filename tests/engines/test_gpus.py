"""GPU assignment: which GPUs are visible, each replica its own tp*pp of them, refusals, and `--dry-run`."""

from __future__ import annotations

import logging
import subprocess

import pytest

from sluice.cli import main
from sluice.engines import GpuPool, NotEnoughGpus, ReplicaPlanner, VisibleGpus, visible_gpus
from sluice.engines._gpus import nvidia_smi_gpus
from sluice.engines.dialects import LaunchSpec


def no_query() -> tuple[str, ...]:
    raise AssertionError("nvidia-smi must not be asked when the GPUs are given")


def test_explicit_gpus_win_over_the_environment_and_nvidia_smi() -> None:
    assert visible_gpus("0, 2,3", {"CUDA_VISIBLE_DEVICES": "5"}, no_query) == VisibleGpus(("0", "2", "3"), "--gpus")
    assert visible_gpus(None, {"CUDA_VISIBLE_DEVICES": "4,5"}, no_query).ids == ("4", "5")
    assert visible_gpus(None, {}, lambda: ("0", "1")) == VisibleGpus(("0", "1"), "nvidia-smi")


@pytest.mark.parametrize("value", ["", "-1"])
def test_cuda_visible_devices_empty_or_minus_one_means_none(value: str) -> None:
    assert visible_gpus(None, {"CUDA_VISIBLE_DEVICES": value}, no_query).ids == ()


def test_nvidia_smi_absent_or_failing_lists_nothing() -> None:
    def absent(*args: object, **kwargs: object) -> subprocess.CompletedProcess[str]:
        raise FileNotFoundError("nvidia-smi")

    def failing(argv: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(argv, 9, "", "NVIDIA-SMI has failed")

    def two(argv: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        assert argv == ["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"]
        return subprocess.CompletedProcess(argv, 0, "0\n1\n", "")

    assert nvidia_smi_gpus(absent) == () and nvidia_smi_gpus(failing) == ()
    assert nvidia_smi_gpus(two) == ("0", "1")


def test_each_replica_gets_gpus_of_its_own_and_they_come_back() -> None:
    pool = GpuPool(VisibleGpus(("0", "1", "2", "3"), "--gpus"))
    first, second = pool.take(2), pool.take(2)
    assert (first, second) == (("0", "1"), ("2", "3"))
    with pytest.raises(NotEnoughGpus, match="needs 2 GPU"):
        pool.take(2)
    pool.give_back(first)
    pool.give_back(first)  # twice: still once in the pool
    assert pool.free == ("0", "1")
    assert pool.take(1) == ("0",)


def test_a_machine_without_gpus_hands_out_none() -> None:
    pool = GpuPool(VisibleGpus((), "nvidia-smi"))
    pool.check_fits(replicas=8, per_replica=4)
    assert not pool.enabled and pool.take(4) == ()


def test_too_many_replicas_are_refused_up_front_with_the_numbers() -> None:
    pool = GpuPool(VisibleGpus(("0", "1", "2", "3"), "CUDA_VISIBLE_DEVICES"))
    with pytest.raises(NotEnoughGpus, match=r"3 replica\(s\) x 2 GPU\(s\).*need 6 GPUs; 4 visible"):
        ReplicaPlanner("vllm", LaunchSpec(model="/m", port=0, tp=2), pool).plan(3)
    assert pool.free == ("0", "1", "2", "3")  # nothing taken by the refused plan


def test_the_planner_sets_cuda_visible_devices_from_tp_times_pp() -> None:
    pool = GpuPool(VisibleGpus(("0", "1", "2", "3", "4", "5", "6", "7"), "--gpus"))
    planner = ReplicaPlanner("sglang", LaunchSpec(model="/m", port=0, tp=2, pp=2), pool)
    commands = planner.plan(2)
    assert [c.env["CUDA_VISIBLE_DEVICES"] for c in commands] == ["0,1,2,3", "4,5,6,7"]
    assert len({c.port for c in commands}) == 2
    with pytest.raises(NotEnoughGpus):
        planner.next()
    planner.release(commands[0])
    assert planner.next().gpus == ("0", "1", "2", "3")


def test_dry_run_prints_each_replicas_env_command_and_url(capsys: pytest.CaptureFixture[str], tmp_path) -> None:
    (tmp_path / "config.json").write_text('{"architectures": ["LlamaForCausalLM"]}')
    assert main(["serve", "--model", str(tmp_path), "--backend", "vllm", "--replicas", "2", "--tp", "2",
                 "--gpus", "0,1,2,3", "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    urls = [line.split(": ", 1)[1] for line in lines if line.startswith("# replica")]
    commands = [line for line in lines if not line.startswith("#")]
    assert commands[0].startswith("CUDA_VISIBLE_DEVICES=0,1 ") and commands[1].startswith("CUDA_VISIBLE_DEVICES=2,3 ")
    assert all("--tensor-parallel-size 2" in c for c in commands)
    assert [u.rsplit(":", 1)[1] for u in urls] == [c.split("--port ")[1].split()[0] for c in commands]


def test_dry_run_refuses_more_gpus_than_visible(capsys: pytest.CaptureFixture[str], tmp_path) -> None:
    assert main(["serve", "--model", str(tmp_path), "--backend", "vllm", "--replicas", "3", "--tp", "2",
                 "--gpus", "0,1,2,3", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "need 6 GPUs; 4 visible (--gpus: 0,1,2,3)" in err and "Traceback" not in err


def test_no_gpu_visible_is_said_once_and_nothing_set(capsys: pytest.CaptureFixture[str], caplog, tmp_path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with caplog.at_level(logging.INFO, logger="sluice"):
        assert main(["serve", "--model", str(tmp_path), "--backend", "vllm", "--replicas", "2", "--dry-run"]) == 0
    assert sum("no GPU visible" in r.getMessage() for r in caplog.records) == 1
    assert "CUDA_VISIBLE_DEVICES" not in capsys.readouterr().out


def test_the_simulator_takes_gpus_only_when_gpus_are_named(capsys: pytest.CaptureFixture[str],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")  # one GPU visible: three simulators still start
    assert main(["serve", "--model", "demo", "--backend", "sim", "--replicas", "3", "--dry-run"]) == 0
    assert "CUDA_VISIBLE_DEVICES" not in capsys.readouterr().out
    assert main(["serve", "--model", "demo", "--backend", "sim", "--replicas", "2", "--gpus", "4,5", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "CUDA_VISIBLE_DEVICES=4 " in out and "CUDA_VISIBLE_DEVICES=5 " in out


@pytest.mark.parametrize("flag", ["--replicas", "--tp", "--pp"])
def test_nonsense_counts_are_refused_in_one_line(flag: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--model", "demo", "--backend", "sim", flag, "0", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert f"{flag} 0: at least 1" in err and "Traceback" not in err
