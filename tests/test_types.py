"""mypy --strict with the pydantic plugin, as configured in pyproject.toml ([tool.mypy]), over the whole package."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _mypy(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(REPO / "pyproject.toml"),
         "--cache-dir", str(tmp_path / "mypy-cache"), *args],
        cwd=REPO, capture_output=True, text=True, timeout=600, check=False,
    )


def test_the_package_type_checks_strictly(tmp_path: Path) -> None:
    run = _mypy(tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "Success: no issues found" in run.stdout, run.stdout


def test_the_configuration_is_strict_and_runs_the_pydantic_plugin(tmp_path: Path) -> None:
    """An untyped function (strict) and a required field with a computed alias (the plugin) are both refused."""
    canary = tmp_path / "canary.py"
    canary.write_text(
        "from pydantic import BaseModel, Field\n\n"
        "ALIAS = 'b'\n\n\n"
        "class Model(BaseModel):\n"
        "    a: int = Field(alias=ALIAS)\n\n\n"
        "def untyped(x):\n"
        "    return x\n",
        encoding="utf-8",
    )
    run = _mypy(tmp_path, str(canary))
    assert run.returncode == 1, run.stdout + run.stderr
    assert "[no-untyped-def]" in run.stdout and "[pydantic-alias]" in run.stdout, run.stdout
