"""bench.replica_change: what it reads and counts as a failure, and one short run against a real gateway."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench import harness
from bench.replica_change import probes, report

METRICS = """\
# HELP vllm:prompt_tokens_total Number of prefill tokens processed.
vllm:prompt_tokens_total{engine="0",model_name="m"} 112.0
vllm:prompt_tokens_total_created{engine="0",model_name="m"} 1.7e+09
vllm:request_success_total{engine="0",finished_reason="stop",model_name="m"} 7.0
vllm:request_success_total{engine="0",finished_reason="length",model_name="m"} 3.0
sluice_rejections_total{model="m",reason="client_disconnected"} 4.0
"""


def test_metric_sum_adds_the_samples_of_one_name_only() -> None:
    assert probes.metric_sum(METRICS, "vllm:prompt_tokens_total") == 112.0
    assert probes.metric_sum(METRICS, "vllm:request_success_total") == 10.0
    assert probes.metric_sum(METRICS, "vllm:request_success_total", finished_reason="length") == 3.0
    assert probes.metric_sum(METRICS, "vllm:num_requests_running") == 0.0


def a_round(kind: str, *, cut: float = 3.0, **extra: Any) -> dict[str, Any]:
    changes = [] if kind == "steady" else [
        {"ok": True, "admin_ms": 5.0, "first_request": {"low_ms": 1.0, "high_ms": 3.0}},
        {"ok": True, "admin_ms": 7.0, "stray_requests": 0.0},
    ]
    return {"kind": kind, "rps": 1000.0, "p50_us": 20_000, "p99_us": 50_000, "gateway_cpu_us_per_request": 400.0,
            "gateway_cpu_pct": 95.0, "load_cpu_pct": 60.0, "requests": 6000, "errors": 0, "connections": 32,
            "gateway_counts": {"rejected:client_disconnected": cut, "protection_engaged": 0.0}, "changes": changes,
            **extra}


def test_a_clean_run_has_no_failure_and_ratios_against_the_steady_rounds() -> None:
    rounds = [a_round("steady"), a_round("add-remove", rps=900.0), a_round("steady", rps=1100.0),
              a_round("add-remove", rps=990.0)]
    summary = report.summarise(rounds)
    assert report.failures(summary) == []
    assert summary["add-remove"]["rps"] == 945.0 and summary["steady"]["rps"] == 1050.0
    assert report.ratios(summary)["add-remove"]["rps"] == pytest.approx(0.9)
    assert summary["add-remove"]["changes"] == 4 and summary["add-remove"]["admin_ms"]["max"] == 7.0
    table = report.markdown(summary, report.ratios(summary))
    assert "| add-remove | 945 (900, 990) |" in table and "| add-remove | 0.900 |" in table


def test_a_change_answered_after_the_load_ended_is_counted_apart_not_as_missing() -> None:
    late = {"low_ms": None, "high_ms": None, "reads": 40, "load_ended": True}
    summary = report.summarise([a_round("steady"), a_round("add-remove", changes=[
        {"ok": True, "admin_ms": 900.0, "first_request": late}])])
    assert report.failures(summary) == []
    assert summary["add-remove"]["first_request_after_load"] == 1 and summary["add-remove"]["admin_ms"]["max"] == 900


@pytest.mark.parametrize(("change", "failure"), [
    ({"errors": 2}, "add-remove: errors = 2"),
    ({"gateway_counts": {"rejected:engine_unavailable": 1.0}}, "add-remove: rejections = 1.0"),
    ({"gateway_counts": {"rejected:client_disconnected": 33.0}}, "add-remove: rounds_cut_more_than_connections = 1"),
    ({"changes": [{"ok": False, "admin_ms": 5.0}]}, "add-remove: changes_failed = 1"),
    ({"changes": [{"ok": True, "admin_ms": 5.0, "stray_requests": 2.0}]}, "add-remove: stray_requests = 2.0"),
    ({"changes": [{"ok": True, "admin_ms": 5.0, "first_request": {"low_ms": None, "high_ms": None}}]},
     "add-remove: first_request_missing = 1"),
])
def test_every_kind_of_failure_is_reported(change: dict[str, Any], failure: str) -> None:
    summary = report.summarise([a_round("steady"), a_round("add-remove", **change)])
    assert report.failures(summary) == [failure]


@pytest.mark.skipif(shutil.which("wrk") is None or shutil.which("taskset") is None or (os.cpu_count() or 1) < 2,
                    reason="needs wrk, taskset and 2 CPUs")
def test_a_short_run_changes_the_replicas_under_load_without_an_error(tmp_path: Path) -> None:
    out = tmp_path / "replica_change.json"
    run = subprocess.run([sys.executable, "-m", "bench.replica_change", "--round-s", "2", "--repeats", "1",
                          "--warmup-s", "0", "--connections", "8", "--idle-changes", "20", "--output", str(out)],
                         cwd=harness.ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode in (0, 1) and out.exists(), run.stdout + run.stderr  # 1: a failure, read below
    result = json.loads(out.read_text())
    assert [r["kind"] for r in result["rounds"]] == ["steady", "steady-with-c", "add-remove", "drain-undrain"]
    # Only the checks with a deadline in them (C's first request within 0.4 s, none on C 0.2 s after it left) may
    # fail on a machine too busy to keep them; no error, rejection or refused change may.
    timed = ("first_request_missing", "stray_requests")
    assert [f for f in result["failures"] if not f.split(": ")[1].startswith(timed)] == [], result["failures"]
    for kind, s in result["summary"].items():
        assert (s["errors"], s["rejections"], s["changes_failed"], s["requests"] > 0) == (0, 0, 0, True), kind
    brought_in = []
    for kind in ("add-remove", "drain-undrain"):
        changes = next(r for r in result["rounds"] if r["kind"] == kind)["changes"]
        assert [c["path"] for c in changes][:2] == [probes.PATHS[(kind, kind == "add-remove")],
                                                    probes.PATHS[(kind, kind != "add-remove")]]
        assert all(c["ok"] and c["status"] == 200 for c in changes)
        brought_in += [c["first_request"]["high_ms"] for c in changes if "first_request" in c]
    assert len(brought_in) == 3 and any(ms is not None for ms in brought_in), "C never got a request"
    assert [(i["kind"], i["changes"], i["failed"]) for i in result["idle"]] == [
        ("read", 20, 0), ("add-remove", 20, 0), ("drain-undrain", 20, 0)]
    assert "| steady |" in result["table"] and "python -m bench.replica_change" in result["command"]
