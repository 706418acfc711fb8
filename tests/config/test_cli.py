"""The `sluice` command's own subcommands (serve is driven live in tests/gateway)."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys

import httpx

from sluice.cli import main
from sluice.config import load_settings
from sluice.identity import KeyRing


def test_keys_create_prints_a_key_and_a_config_line_that_accepts_it(tmp_path, capsys):
    assert main(["keys", "create", "--id", "alice", "--tenant", "acme", "--tier", "default"]) == 0
    out = capsys.readouterr().out
    key = re.search(r"(sk-sluice-\S+)", out).group(1)
    line = next(line for line in out.splitlines() if "hash:" in line)
    config = tmp_path / "c.yaml"
    config.write_text("models: [{name: m, sim: {}}]\nkeys:\n" + line + "\n")
    settings = load_settings(config)
    principal = KeyRing(settings.keys, settings.tiers).authenticate(f"Bearer {key}")
    assert (principal.key_id, principal.tenant) == ("alice", "acme")
    assert key not in config.read_text()


def test_check_config_reports_errors_with_exit_code_2(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("models: [{name: m, sim: {speed: -1}}]\nauth: {mode: open}\n")
    assert main(["check-config", str(bad)]) == 2
    assert "models.0.sim.speed" in capsys.readouterr().err


def test_check_config_summarises_a_good_file(tmp_path, capsys):
    good = tmp_path / "good.yaml"
    good.write_text("models: [{name: m, sim: {}}]\nauth: {mode: open}\n")
    assert main(["check-config", str(good)]) == 0
    assert "1 model(s)" in capsys.readouterr().out


def test_tune_gc_freezes_startup_objects_and_collects_young_objects_less_often() -> None:
    import gc

    from sluice.cli import GC_GEN0_THRESHOLD, tune_gc

    before = gc.get_threshold()
    gc.unfreeze()
    try:
        tune_gc()
        assert gc.get_freeze_count() > 1000  # the imported modules' objects
        assert gc.get_threshold() == (GC_GEN0_THRESHOLD, before[1], before[2])
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


def test_bench_tunes_the_collector_before_it_runs(monkeypatch) -> None:
    """The load tester's own collections would be measured as the server's latency (a 43 ms full collection in
    the middle of a 20 s run at 300 requests/s, before it was tuned)."""
    import sluice.bench
    import sluice.cli

    calls = []
    monkeypatch.setattr(sluice.cli, "tune_gc", lambda: calls.append("tune_gc"))
    monkeypatch.setattr(sluice.bench, "run_command", lambda args: calls.append("run") or 0)
    assert main(["bench", "--base-url", "http://127.0.0.1:9", "--model", "m"]) == 0
    assert calls == ["tune_gc", "run"]


def _serve(*argv: str, cwd) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "sluice.cli", "serve", *argv], stderr=subprocess.PIPE, text=True,
                            cwd=cwd, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def _stop(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    assert proc.stderr is not None
    proc.stderr.close()


def _read_until_banner_end(proc: subprocess.Popen[str]) -> list[str]:
    assert proc.stderr is not None
    lines: list[str] = []
    while not lines or not lines[-1].startswith("Try: "):
        line = proc.stderr.readline()
        assert line, "".join(lines)  # the process ended before its banner
        lines.append(line)
    return lines


def test_serve_announces_only_once_it_serves_on_the_port_it_names(tmp_path) -> None:
    """--port 0: the banner names the port the kernel chose, and that port answers as the banner is read."""
    proc = _serve("--port", "0", cwd=tmp_path)
    try:
        lines = _read_until_banner_end(proc)
        url = re.search(r"listening on (http://\S+)/v1", "".join(lines)).group(1)
        assert httpx.get(url + "/health", timeout=10).status_code == 200
        assert "Config: the embedded default" in "".join(lines)
    finally:
        _stop(proc)


def test_serve_names_the_users_config_file_not_the_embedded_default(tmp_path) -> None:
    config = tmp_path / "open.yaml"
    config.write_text("models: [{name: m, sim: {}}]\nauth: {mode: open}\n")
    proc = _serve("--config", str(config), "--port", "0", cwd=tmp_path)
    try:
        text = "".join(_read_until_banner_end(proc))
        text += proc.stderr.readline()  # the open-access warning follows the banner
        assert f"Config: {config}" in text
        assert "embedded default" not in text
        assert "Access is OPEN" in text
    finally:
        _stop(proc)


def test_serve_on_a_taken_port_says_so_in_one_line_and_exits_3_without_a_banner(tmp_path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        done = subprocess.run([sys.executable, "-m", "sluice.cli", "serve", "--port", str(port)],
                              capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert done.returncode == 3
    assert "listening" not in done.stderr and "Try:" not in done.stderr
    assert done.stderr.strip().splitlines() == [
        f"sluice: cannot listen on 127.0.0.1:{port}: Address already in use (another server has that port? "
        "choose another with --port)"]


def test_serve_workers_refuse_a_port_another_reuseport_server_holds(tmp_path) -> None:
    """SO_REUSEPORT alone would let a second `--workers` gateway share the port of the first, silently."""
    config = tmp_path / "c.yaml"
    config.write_text("models: [{name: m, sim: {}}]\nauth: {mode: open}\nstate: redis://127.0.0.1:1/0\n")
    with socket.socket() as holder:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        done = subprocess.run([sys.executable, "-m", "sluice.cli", "serve", "--config", str(config), "--port",
                               str(port), "--workers", "2"], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert done.returncode == 3, done.stderr
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in done.stderr
    assert "listening" not in done.stderr


def test_check_config_and_serve_refuse_a_bad_file_with_the_same_located_lines(tmp_path, capsys) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("auth: {mode: open}\nmodels:\n  - name: m\n    sim: {max_num_seqs: lots}\n    colour: red\n")
    expected = [f"{bad}:4: models.0.sim.max_num_seqs: must be a whole number (got 'lots')",
                f"{bad}:5: models.0.colour: unknown setting (known here: admission, autoscale, cache, engine, "
                "max_model_len, name, sim, tokenizer)"]
    for argv in (["check-config", str(bad)], ["serve", "--config", str(bad)]):
        assert main(argv) == 2
        err = capsys.readouterr().err.splitlines()
        assert err[0] == "sluice: configuration error (2 problems):"
        assert sorted(err[1:]) == sorted(expected)
