"""The scale-out hook on an injected clock: it fires when the rejection or saturation condition holds for the
whole window, at most once per interval, and not otherwise."""

from __future__ import annotations

import json
import sys

from sluice.clock import FakeClock
from sluice.config import ScaleOutSettings
from sluice.gateway._scale_out import ScaleOutHook


class Traffic:
    def __init__(self) -> None:
        self.total = 0
        self.refused = 0
        self.saturation = {"m": 0.2}

    def add(self, requests: int, refused: int) -> None:
        self.total += requests
        self.refused += refused


def hook(tmp_path, clock, traffic):
    out = tmp_path / "payloads.jsonl"
    command = [sys.executable, "-c", f"import sys; open({str(out)!r}, 'a').write(sys.stdin.read() + '\\n')"]
    settings = ScaleOutSettings(command=command, window_s=60, interval_s=300, check_s=5, rejection_ratio=0.05)
    return ScaleOutHook(settings, clock, lambda: traffic.saturation, lambda: (traffic.total, traffic.refused)), out


async def run(clock, h, traffic, seconds, requests_per_check, refused_per_check):
    sent = []
    for _ in range(int(seconds / 5)):
        traffic.add(requests_per_check, refused_per_check)
        clock.advance(5)
        payload = await h.check()
        if payload:
            sent.append(payload)
    return sent


async def test_a_rejection_ratio_above_five_percent_for_the_window_calls_the_command_once(tmp_path):
    clock, traffic = FakeClock(), Traffic()
    h, out = hook(tmp_path, clock, traffic)
    assert await run(clock, h, traffic, 120, 100, 4) == []  # 4%: nothing
    sent = await run(clock, h, traffic, 120, 100, 6)  # 6%: once, then quiet for the interval
    assert len(sent) == 1 and sent[0]["rejection_ratio"] > 0.05
    assert json.loads(out.read_text().splitlines()[0])["event"] == "sluice.scale_out"
    assert await run(clock, h, traffic, 120, 100, 6) == []  # within interval_s of the last call
    assert len(await run(clock, h, traffic, 120, 100, 6)) == 1  # and again after it


async def test_sustained_saturation_calls_it_but_a_spike_does_not(tmp_path):
    clock, traffic = FakeClock(), Traffic()
    h, _ = hook(tmp_path, clock, traffic)
    traffic.saturation = {"m": 0.2}
    await run(clock, h, traffic, 60, 10, 0)
    traffic.saturation = {"m": 1.5}
    assert await run(clock, h, traffic, 30, 10, 0) == []  # half a window: a spike
    traffic.saturation = {"m": 0.5}
    await run(clock, h, traffic, 10, 10, 0)
    traffic.saturation = {"m": 1.5}
    sent = await run(clock, h, traffic, 70, 10, 0)
    assert len(sent) == 1 and sent[0]["saturated_models"] == ["m"]
