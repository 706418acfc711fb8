"""``console.runs_dir`` and ``console.keep_runs``: load tests are written where the configuration says (not
$SLUICE_RUNS_DIR), and only the last ``keep_runs`` of them stay there, the older ones deleted from disk and list."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sluice.config import parse_settings
from sluice.identity import generate_key, hash_key
from tests.console.console_server import logged_in, serve_console
from tests.console.test_load_test_runs import run_to_the_end

ADMIN_KEY = generate_key()
RUN = {"model": "m", "concurrency": 2, "duration_s": 0.5, "input_len": "8", "output_len": "4"}


def test_runs_go_to_the_configured_directory_and_only_the_last_ones_are_kept(tmp_path: Path) -> None:
    runs_dir = tmp_path / "configured-runs"
    (runs_dir / "notes").mkdir(parents=True)  # not a run: never pruned
    (runs_dir / "notes" / "summary.json").write_text("{}")
    settings = parse_settings({"auth": {"mode": "open", "admin_key_hash": hash_key(ADMIN_KEY)},
                               "models": [{"name": "m", "sim": {"speed": 500}}],
                               "console": {"runs_dir": str(runs_dir), "keep_runs": 2}})
    env_dir = Path(os.environ["SLUICE_RUNS_DIR"])
    before_in_env = set(env_dir.iterdir()) if env_dir.is_dir() else set()
    with serve_console(settings) as live:
        session, csrf = logged_in(live.url, ADMIN_KEY)
        session.headers["x-sluice-csrf"] = csrf
        runs = [run_to_the_end(session, RUN) for _ in range(3)]
        listed = [run["id"] for run in session.get("/console/api/loadtests").json()["data"]]
    kept = sorted(p.name for p in runs_dir.iterdir() if not p.name.startswith("."))  # .claims, .running: numbers
    assert kept == sorted([runs[1]["dir"], runs[2]["dir"], "notes"])
    assert sorted(p.name for p in (runs_dir / ".claims").iterdir()) == sorted(str(r["id"]) for r in runs[1:])
    assert not list((runs_dir / ".running").glob("*.json"))  # no run left "running"
    assert all((runs_dir / run["dir"] / "summary.json").is_file() for run in runs[1:])
    assert runs[0]["id"] not in listed and {runs[1]["id"], runs[2]["id"]} <= set(listed)
    after_in_env = set(env_dir.iterdir()) if env_dir.is_dir() else set()
    assert after_in_env == before_in_env  # the setting wins over $SLUICE_RUNS_DIR


def test_keep_runs_must_be_at_least_one() -> None:
    with pytest.raises(Exception, match="keep_runs"):
        parse_settings({"models": [{"name": "m", "sim": {}}], "console": {"keep_runs": 0}})
