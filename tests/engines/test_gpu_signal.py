"""GPU use per replica: dcgm-exporter's text (captured samples), NVML behind its protocol (the fake, and the real
``PynvmlReader`` against the exact pynvml calls it makes), and the scraper that fills the reading: from the
simulator's own /metrics, from a separate exporter URL, or through NVML; a failed GPU read is unknown."""

from __future__ import annotations

import socket
from types import SimpleNamespace
from typing import Any

import pytest
from aiohttp import web
from pydantic import ValidationError

from sluice.clock import FakeClock
from sluice.config import EngineSettings, GpuSettings, SimSettings
from sluice.engines import (
    FakeNvml,
    GpuReadError,
    GpuSignal,
    GpuUnavailable,
    LoadScraper,
    PynvmlReader,
    Replica,
    parse_dcgm,
    parse_load,
)
from sluice.engines._scraper import with_rate
from sluice.engines.dialects import VLLM
from sluice.sim import SimServer

# dcgm-exporter 4.x on a Tesla T4, as published in a Kubernetes AI-conformance evidence page (curl :9400/metrics,
# the three gauges of the default counters among others)
T4 = """\
# HELP DCGM_FI_DEV_GPU_UTIL GPU utilization (in %).
# TYPE DCGM_FI_DEV_GPU_UTIL gauge
DCGM_FI_DEV_GPU_UTIL{gpu="0",UUID="GPU-d7cbb0cd-d4bd-c2f7-dfaf-221df5e958ea",pci_bus_id="00000000:00:1E.0",\
device="nvidia0",modelName="Tesla T4",Hostname="ip-10-200-3-41",DCGM_FI_DRIVER_VERSION="580.105.08"} 0
# HELP DCGM_FI_DEV_FB_FREE Framebuffer memory free (in MiB).
# TYPE DCGM_FI_DEV_FB_FREE gauge
DCGM_FI_DEV_FB_FREE{gpu="0",UUID="GPU-d7cbb0cd-d4bd-c2f7-dfaf-221df5e958ea",pci_bus_id="00000000:00:1E.0",\
device="nvidia0",modelName="Tesla T4",Hostname="ip-10-200-3-41",DCGM_FI_DRIVER_VERSION="580.105.08"} 14912
# HELP DCGM_FI_DEV_FB_USED Framebuffer memory used (in MiB).
# TYPE DCGM_FI_DEV_FB_USED gauge
DCGM_FI_DEV_FB_USED{gpu="0",UUID="GPU-d7cbb0cd-d4bd-c2f7-dfaf-221df5e958ea",pci_bus_id="00000000:00:1E.0",\
device="nvidia0",modelName="Tesla T4",Hostname="ip-10-200-3-41",DCGM_FI_DRIVER_VERSION="580.105.08"} 0
# HELP DCGM_FI_DEV_POWER_USAGE Power draw (in W).
# TYPE DCGM_FI_DEV_POWER_USAGE gauge
DCGM_FI_DEV_POWER_USAGE{gpu="0",UUID="GPU-d7cbb0cd-d4bd-c2f7-dfaf-221df5e958ea",pci_bus_id="00000000:00:1E.0",\
device="nvidia0",modelName="Tesla T4",Hostname="ip-10-200-3-41",DCGM_FI_DRIVER_VERSION="580.105.08"} 14.512000
"""

# two GPUs of one host, the exporter's Kubernetes labels on (the shape of its README's sample)
TWO_A100 = """\
# HELP DCGM_FI_DEV_GPU_UTIL GPU utilization (in %).
# TYPE DCGM_FI_DEV_GPU_UTIL gauge
DCGM_FI_DEV_GPU_UTIL{gpu="0",UUID="GPU-aaaa",device="nvidia0",modelName="NVIDIA A100-SXM4-80GB",Hostname="n1",\
container="",namespace="",pod=""} 93
DCGM_FI_DEV_GPU_UTIL{gpu="1",UUID="GPU-bbbb",device="nvidia1",modelName="NVIDIA A100-SXM4-80GB",Hostname="n1",\
container="",namespace="",pod=""} 40
# HELP DCGM_FI_DEV_FB_USED Framebuffer memory used (in MiB).
# TYPE DCGM_FI_DEV_FB_USED gauge
DCGM_FI_DEV_FB_USED{gpu="0",UUID="GPU-aaaa",device="nvidia0",modelName="NVIDIA A100-SXM4-80GB",Hostname="n1"} 70000
DCGM_FI_DEV_FB_USED{gpu="1",UUID="GPU-bbbb",device="nvidia1",modelName="NVIDIA A100-SXM4-80GB",Hostname="n1"} 1000
# HELP DCGM_FI_DEV_FB_FREE Framebuffer memory free (in MiB).
# TYPE DCGM_FI_DEV_FB_FREE gauge
DCGM_FI_DEV_FB_FREE{gpu="0",UUID="GPU-aaaa",device="nvidia0",modelName="NVIDIA A100-SXM4-80GB",Hostname="n1"} 11920
DCGM_FI_DEV_FB_FREE{gpu="1",UUID="GPU-bbbb",device="nvidia1",modelName="NVIDIA A100-SXM4-80GB",Hostname="n1"} 80920
"""


def test_a_captured_dcgm_exporter_sample_is_read() -> None:
    reading = parse_dcgm(T4, None, read_at=7.0)
    assert (reading.utilization, reading.fb_used_mib, reading.fb_free_mib, reading.gpus) == (0.0, 0.0, 14912.0, 1)
    assert reading.read_at == 7.0


def test_a_replicas_gpus_are_picked_by_index_or_uuid() -> None:
    assert parse_dcgm(TWO_A100, ["1"], 0.0).utilization == pytest.approx(0.40)
    second = parse_dcgm(TWO_A100, ["GPU-bbbb"], 0.0)
    assert (second.fb_used_mib, second.fb_free_mib, second.gpus) == (1000.0, 80920.0, 1)
    both = parse_dcgm(TWO_A100, None, 0.0)  # a tensor-parallel replica: the busiest GPU, memory summed
    assert (both.utilization, both.fb_used_mib, both.fb_free_mib, both.gpus) == (pytest.approx(0.93), 71000.0,
                                                                                   92840.0, 2)


@pytest.mark.parametrize("text", ["", "DCGM_FI_DEV_GPU_UTIL{gpu=\"0\"} oops\n",
                                  "# TYPE x gauge\nvllm:num_requests_running 1\n"])
def test_missing_or_garbled_gauges_are_read_errors(text: str) -> None:
    with pytest.raises(GpuReadError):
        parse_dcgm(text, None, 0.0)


def test_a_gpu_the_exporter_does_not_list_is_a_read_error() -> None:
    with pytest.raises(GpuReadError, match="GPU-cccc"):
        parse_dcgm(TWO_A100, ["0", "GPU-cccc"], 0.0)


class RecordingPynvml:
    """A stand-in for the ``pynvml`` module that records the calls ``PynvmlReader`` makes."""

    class NVMLError(Exception):
        pass

    def __init__(self, *, init_fails: bool = False) -> None:
        self.calls: list[tuple[str, Any]] = []
        self._init_fails = init_fails

    def nvmlInit(self) -> None:  # pynvml's names
        self.calls.append(("nvmlInit", None))
        if self._init_fails:
            raise self.NVMLError("Driver Not Loaded")

    def nvmlShutdown(self) -> None:
        self.calls.append(("nvmlShutdown", None))

    def nvmlDeviceGetHandleByIndex(self, index: int) -> str:
        self.calls.append(("nvmlDeviceGetHandleByIndex", index))
        if index > 1:
            raise self.NVMLError("Invalid Argument")
        return f"handle-{index}"

    def nvmlDeviceGetHandleByUUID(self, gpu_uuid: str) -> str:
        self.calls.append(("nvmlDeviceGetHandleByUUID", gpu_uuid))
        return f"handle-{gpu_uuid}"

    def nvmlDeviceGetUtilizationRates(self, handle: str) -> SimpleNamespace:
        self.calls.append(("nvmlDeviceGetUtilizationRates", handle))
        return SimpleNamespace(gpu=91, memory=40)  # c_nvmlUtilization_t: percents

    def nvmlDeviceGetMemoryInfo(self, handle: str) -> SimpleNamespace:
        self.calls.append(("nvmlDeviceGetMemoryInfo", handle))
        return SimpleNamespace(total=80 * 1024**3, used=60 * 1024**3, free=20 * 1024**3)  # c_nvmlMemory_t: bytes


def test_the_pynvml_reader_makes_nvmls_calls() -> None:
    module = RecordingPynvml()
    reader = PynvmlReader(module)  # type: ignore[arg-type]
    assert reader.read("1") == (pytest.approx(0.91), 60 * 1024.0, 20 * 1024.0)
    reader.read("GPU-aaaa")
    reader.close()
    assert module.calls == [
        ("nvmlInit", None),
        ("nvmlDeviceGetHandleByIndex", 1), ("nvmlDeviceGetUtilizationRates", "handle-1"),
        ("nvmlDeviceGetMemoryInfo", "handle-1"),
        ("nvmlDeviceGetHandleByUUID", "GPU-aaaa"), ("nvmlDeviceGetUtilizationRates", "handle-GPU-aaaa"),
        ("nvmlDeviceGetMemoryInfo", "handle-GPU-aaaa"),
        ("nvmlShutdown", None),
    ]
    with pytest.raises(GpuReadError, match="NVML device 7"):
        reader.read("7")


def test_nvml_that_does_not_start_is_a_clear_error_at_start() -> None:
    with pytest.raises(GpuUnavailable, match="NVIDIA driver"):
        PynvmlReader(RecordingPynvml(init_fails=True))  # type: ignore[arg-type]


def test_the_real_binding_on_a_machine_without_the_driver_says_so() -> None:
    pytest.importorskip("pynvml")  # nvidia-ml-py, in the test extras
    with pytest.raises(GpuUnavailable, match="NVML did not start"):
        PynvmlReader()  # this machine has no NVIDIA driver: libnvidia-ml.so is not found


def test_without_nvidia_ml_py_the_error_names_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(__import__("sys").modules, "pynvml", None)  # import pynvml -> ImportError
    with pytest.raises(GpuUnavailable, match="nvidia-ml-py"):
        PynvmlReader()


def test_each_replica_gets_its_own_plan() -> None:
    urls = ["http://e1:8000", "http://e2:8000"]
    own = GpuSignal(GpuSettings(), urls)
    assert own.plan("http://e1:8000").source == "engine"  # type: ignore[union-attr]
    assert own.plan("http://discovered:8000").source == "engine"  # type: ignore[union-attr]
    exporters = GpuSignal(GpuSettings(urls=["http://h1:9400/metrics", "http://h2:9400/metrics"],
                                      devices=[["0"], ["1"]]), urls)
    plan = exporters.plan("http://e2:8000")
    assert plan is not None and (plan.source, plan.url, plan.devices) == ("dcgm", "http://h2:9400/metrics", ("1",))
    assert exporters.plan("http://discovered:8000") is None  # no exporter known for it: unknown
    nvml = GpuSignal(GpuSettings(source="nvml", devices=[["0", "1"], ["2"]]), urls, FakeNvml())
    assert nvml.plan("http://e1:8000") == type(plan)("nvml", ("0", "1"))


# -- the scraper fills the reading ------------------------------------------------------------------------

SIM = SimSettings(max_num_seqs=2, block_size=16, num_kv_blocks=64, max_model_len=512)


async def test_the_scraper_reads_the_simulators_gpu_from_its_own_metrics() -> None:
    async with await SimServer.start(SIM, model_name="m", clock=FakeClock()) as sim:
        scraper = LoadScraper([Replica(sim.url)], FakeClock(start=5.0), gpu=GpuSignal(GpuSettings(), [sim.url]))
        try:
            await scraper.scrape_once()
            sample = scraper.latest(sim.url)
            assert sample is not None and sample.gpu is not None
            assert sample.gpu.utilization == 0.0 and sample.gpu.fb_used_mib == SIM.gpu_weights_mib
            assert sample.gpu.read_at == 5.0
            assert scraper.readings()[sim.url]["gpu"] == sample.gpu.describe()
        finally:
            await scraper.stop()


def _closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}/metrics"


async def test_a_separate_exporter_is_read_and_its_failure_leaves_the_gpu_unknown() -> None:
    exporter_text = {"body": TWO_A100}

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(text=exporter_text["body"])

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    exporter = f"http://127.0.0.1:{runner.addresses[0][1]}/metrics"
    try:
        async with await SimServer.start(SIM, model_name="m", clock=FakeClock()) as sim:
            gpu = GpuSignal(GpuSettings(urls=[exporter], devices=[["GPU-aaaa"]]), [sim.url])
            scraper = LoadScraper([Replica(sim.url)], FakeClock(), gpu=gpu)
            try:
                await scraper.scrape_once()
                sample = scraper.latest(sim.url)
                assert sample is not None and sample.gpu is not None
                assert sample.gpu.utilization == pytest.approx(0.93) and sample.gpu.fb_used_mib == 70000
                exporter_text["body"] = "# nothing here\n"
                await scraper.scrape_once()
                sample = scraper.latest(sim.url)
                assert sample is not None and sample.gpu is None  # unknown, and the load still read
                assert scraper.last_error(sim.url) is None
                assert "DCGM_FI_DEV_GPU_UTIL" in str(scraper.readings()[sim.url]["gpu_error"])
                down = GpuSignal(GpuSettings(urls=[_closed_port_url()]), [sim.url])
                scraper_down = LoadScraper([Replica(sim.url)], FakeClock(), gpu=down)
                try:
                    await scraper_down.scrape_once()
                    sample = scraper_down.latest(sim.url)
                    assert sample is not None and sample.gpu is None
                finally:
                    await scraper_down.stop()
            finally:
                await scraper.stop()
    finally:
        await runner.cleanup()


async def test_nvml_readings_fill_the_sample() -> None:
    nvml = FakeNvml({"0": (0.95, 70000.0, 11000.0), "1": (0.5, 1000.0, 80000.0)})
    async with await SimServer.start(SIM, model_name="m", clock=FakeClock()) as sim:
        gpu = GpuSignal(GpuSettings(source="nvml", devices=[["0", "1"]]), [sim.url], nvml)
        scraper = LoadScraper([Replica(sim.url)], FakeClock(), gpu=gpu)
        try:
            await scraper.scrape_once()
            sample = scraper.latest(sim.url)
            assert sample is not None and sample.gpu is not None
            assert (sample.gpu.utilization, sample.gpu.fb_used_mib, sample.gpu.gpus) == (0.95, 71000.0, 2)
            del nvml.devices["1"]  # a device that vanished: unknown, not saturated
            await scraper.scrape_once()
            sample = scraper.latest(sim.url)
            assert sample is not None and sample.gpu is None
        finally:
            await scraper.stop()
        gpu.close()
        assert nvml.closed


def _vllm(preemptions: float | None) -> str:
    text = ("vllm:num_requests_running{engine=\"0\"} 4\nvllm:num_requests_waiting{engine=\"0\"} 1\n"
            "vllm:kv_cache_usage_perc{engine=\"0\"} 0.5\n")
    if preemptions is not None:
        text += f"# TYPE vllm:num_preemptions counter\nvllm:num_preemptions_total{{engine=\"0\"}} {preemptions}\n"
    return text


def test_preemptions_per_second_come_from_the_counters_increase() -> None:
    first = parse_load(_vllm(3), VLLM.metrics, scraped_at=10.0)
    assert first.preemptions_total == 3 and first.preemptions_per_s is None
    second = with_rate(parse_load(_vllm(9), VLLM.metrics, scraped_at=12.0), first)
    assert second.preemptions_per_s == pytest.approx(3.0)
    restarted = with_rate(parse_load(_vllm(0), VLLM.metrics, scraped_at=13.0), second)
    assert restarted.preemptions_per_s == 0.0  # a counter that went back: the engine restarted
    none = with_rate(parse_load(_vllm(None), VLLM.metrics, scraped_at=14.0), restarted)
    assert none.preemptions_total is None and none.preemptions_per_s is None  # an engine without the counter


@pytest.mark.parametrize(("gpu", "message"), [
    ({"source": "nvml"}, "give devices"),
    ({"source": "nvml", "devices": [["0"]], "urls": ["http://h:9400/metrics"]}, "not urls"),
    ({"urls": ["http://h1:9400/metrics", "http://h2:9400/metrics"]}, "one entry per engine url"),
    ({"devices": [["0"], ["1"]]}, "one entry per engine url"),
    ({"urls": ["h1:9400"]}, "not an http"),
    ({"source": "rocm"}, "source"),
])
def test_gpu_settings_that_cannot_work_are_refused(gpu: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        EngineSettings(urls=["http://e1:8000"], gpu=gpu)
