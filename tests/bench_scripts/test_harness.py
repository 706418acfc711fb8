"""The benchmarks' shared harness (bench/harness.py) and the suite's page blocks (bench/suite.py)."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest

from bench import harness, suite


def test_cpu_set_reads_taskset_lists() -> None:
    assert harness.cpu_set("0") == {0}
    assert harness.cpu_set("0,2-4") == {0, 2, 3, 4}
    assert harness.pinned("") == []
    assert harness.pinned("1") == ["taskset", "-c", "1"]


def test_command_line_names_the_module_as_typed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", [str(harness.BENCH_DIR / "overload" / "__main__.py"), "--loads", "3"])
    assert harness.command_line() == "python -m bench.overload --loads 3"
    monkeypatch.setattr(sys, "argv", [str(harness.BENCH_DIR / "streams.py"), "--streams", "40"])
    assert harness.command_line() == "python -m bench.streams --streams 40"


def test_write_result_makes_its_directory(tmp_path: Path) -> None:
    out = tmp_path / "deeper" / "x.json"
    harness.write_result(out, {"table": "| a |", "when": harness.ROOT})
    assert json.loads(out.read_text()) == {"table": "| a |", "when": str(harness.ROOT)}


def test_processes_are_stopped_by_pid_and_their_logs_kept(tmp_path: Path) -> None:
    procs = harness.Processes(tmp_path)
    child = procs.start("sleeper", harness.ANY_CPU, [sys.executable, "-c",
                                                     "import sys, time; print('up', file=sys.stderr, flush=True); "
                                                     "time.sleep(60)"])
    port_holder = procs.start("server", harness.ANY_CPU, [sys.executable, "-m", "http.server", "--bind", "127.0.0.1",
                                                          str(port := harness.free_port())])
    harness.wait_port(port_holder, port, timeout_s=20)
    deadline = time.monotonic() + 10
    while "up" not in child.log_tail() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "up" in child.log_tail()
    assert harness.rss_bytes(child.pid) > 0
    procs.stop_all()
    for proc in (child, port_holder):
        assert proc.popen.returncode is not None
        with pytest.raises(ProcessLookupError):
            os.kill(proc.pid, 0)


def test_wait_port_reports_a_child_that_died(tmp_path: Path) -> None:
    procs = harness.Processes(tmp_path)
    try:
        dead = procs.start("dead", harness.ANY_CPU, [sys.executable, "-c", "import sys; sys.exit('boom')"])
        with pytest.raises(RuntimeError, match="dead exited with 1"):
            harness.wait_port(dead, harness.free_port(), timeout_s=20)
    finally:
        procs.stop_all()


def test_suite_replaces_its_block_in_place_or_appends_it() -> None:
    page = "# T\n\ntext\n<!-- suite:x:begin -->\nold\n<!-- suite:x:end -->\n\nafter\n"
    replaced = suite.replace_block(page, "x", "new")
    assert replaced == "# T\n\ntext\n<!-- suite:x:begin -->\nnew\n<!-- suite:x:end -->\n\nafter\n"
    appended = suite.replace_block("# T\n", "y", "body")
    assert appended == "# T\n\n<!-- suite:y:begin -->\nbody\n<!-- suite:y:end -->\n"


def test_every_suite_benchmark_is_a_module() -> None:
    for name in suite.BENCHMARKS:
        assert (harness.BENCH_DIR / f"{name}.py").exists() or (harness.BENCH_DIR / name / "__main__.py").exists(), name


def test_cpu_ticks_reads_one_cpu_or_the_machine() -> None:
    busy, total = harness.cpu_ticks()
    busy0, total0 = harness.cpu_ticks("cpu0")
    assert 0 < busy <= total and 0 < busy0 <= total0
    assert total0 < total or os.cpu_count() == 1  # one CPU's line, not the machine's
    with pytest.raises(RuntimeError):
        harness.cpu_ticks("cpu9999")
