"""The `sluice` command's own subcommands (serve is driven live in tests/gateway)."""

from __future__ import annotations

import re

from sluice.cli import main
from sluice.config import load_settings
from sluice.identity import KeyRing


def test_keys_create_prints_a_key_and_a_config_line_that_accepts_it(tmp_path, capsys):
    assert main(["keys", "create", "--id", "alice", "--tenant", "acme"]) == 0
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
