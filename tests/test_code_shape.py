"""The shape of the code, checked on every run: ruff's lint of src and tests, the import rules of the design and the
module size limit (tests/test_types.py runs mypy --strict).

The import rules: each package of ``sluice`` names the packages it must not import, after the design's import
direction ``errors, clock`` → ``config, protocol, dialects, state`` → ``identity, quota, admission, engines, cache,
telemetry`` → ``gateway`` → ``console`` → ``cli``, with ``quota`` and ``admission`` apart from ``engines``, and the
simulator an engine of its own. Imports are read from the source (ast), relative ones resolved, imports under
``TYPE_CHECKING`` included: a type is a dependency too.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "src" / "sluice"
MAX_MODULE_LINES = 600

_LEAVES = frozenset({"errors", "clock", "ids"})
_EVERY_PACKAGE = _LEAVES | {
    "config", "protocol", "dialects", "state", "identity", "quota", "admission", "engines", "cache", "telemetry",
    "gateway", "console", "sim", "bench", "plan", "cli",
}

# A package (a directory of src/sluice, or a top-level module) -> the sluice packages it must not import.
# Every package of src/sluice has a row; only the command line (cli), at the top, may import anything.
FORBIDDEN_IMPORTS: dict[str, frozenset[str]] = {
    **dict.fromkeys(_LEAVES, _EVERY_PACKAGE - _LEAVES),
    "config": frozenset({"quota", "admission", "engines", "gateway", "sim", "cli"}),
    "protocol": frozenset({"quota", "admission", "engines", "gateway", "identity", "sim", "cache", "telemetry", "cli"}),
    "dialects": frozenset({
        "quota", "admission", "engines", "gateway", "sim", "identity", "cache", "telemetry", "console", "cli",
    }),
    "state": frozenset({
        "quota", "admission", "engines", "gateway", "sim", "identity", "cache", "telemetry", "console", "cli",
    }),
    "identity": frozenset({"quota", "admission", "engines", "gateway", "sim", "cli"}),
    "quota": frozenset({"engines", "gateway", "admission", "sim", "console", "bench", "cli"}),
    "admission": frozenset({"engines", "gateway", "sim", "console", "bench", "cli"}),
    "engines": frozenset({"quota", "admission", "gateway", "console", "bench", "cli"}),
    "cache": frozenset({
        "quota", "admission", "engines", "gateway", "sim", "identity", "telemetry", "console", "bench", "cli",
    }),
    "telemetry": frozenset({
        "quota", "admission", "engines", "gateway", "sim", "identity", "cache", "console", "bench", "cli",
    }),
    "sim": frozenset({
        "quota", "admission", "engines", "gateway", "identity", "cache", "console", "telemetry", "state", "cli",
    }),
    "gateway": frozenset({"console", "bench", "cli"}),
    "console": frozenset({"quota", "admission", "engines", "sim", "identity", "cache", "cli"}),
    # the load generator is a client of the gateway over HTTP: it shares the wire models, nothing of the server
    "bench": frozenset({
        "quota", "admission", "engines", "gateway", "sim", "identity", "cache", "telemetry", "state", "console", "cli",
    }),
    # the what-if planner: quota and admission in front of the simulator's engine model, nothing of the server
    "plan": frozenset({"engines", "gateway", "cache", "telemetry", "state", "console", "cli"}),
}
# only the command line imports the planner
FORBIDDEN_IMPORTS = {name: rules | {"plan"} if name != "plan" else rules for name, rules in FORBIDDEN_IMPORTS.items()}
UNRESTRICTED = frozenset({"cli"})


@dataclass(frozen=True)
class Violation:
    module: Path
    line: int
    what: str

    def __str__(self) -> str:
        return f"{self.module}:{self.line}: {self.what}"


def package_of(parts: tuple[str, ...]) -> str:
    """The package a module belongs to, from its path under the package root: ``quota/_redis.py`` -> ``quota``."""
    return parts[0].removesuffix(".py") if len(parts) == 1 else parts[0]


def imported_names(tree: ast.Module, parts: tuple[str, ...], root_name: str = "sluice") -> Iterator[tuple[int, str]]:
    """(line, dotted name) of every import in a module, relative ones resolved; ``from a import b`` gives ``a.b``
    (``from sluice import engines`` imports a package)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                here = [root_name, *parts[:-1]]
                base = ".".join([*here[: len(here) - (node.level - 1)], *([node.module] if node.module else [])])
            else:
                base = node.module or ""
            for alias in node.names:
                yield node.lineno, f"{base}.{alias.name}"


def layout_violations(root: Path, root_name: str = "sluice") -> list[Violation]:
    """Forbidden imports and modules over the size limit, in every module under ``root``."""
    found: list[Violation] = []
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).parts
        source = path.read_text(encoding="utf-8")
        lines = source.count("\n")
        if lines > MAX_MODULE_LINES:
            found.append(Violation(path, lines, f"{lines} lines, over the limit of {MAX_MODULE_LINES}"))
        package = package_of(parts)
        forbidden = FORBIDDEN_IMPORTS.get(package, frozenset())
        for line, name in imported_names(ast.parse(source, filename=str(path)), parts, root_name):
            dotted = name.split(".")
            if dotted[0] == root_name and len(dotted) > 1 and dotted[1] in forbidden:
                found.append(Violation(path, line, f"{package} imports {'.'.join(dotted[:2])}"))
    return found


def packages_under(root: Path) -> set[str]:
    return {
        package_of(path.relative_to(root).parts)
        for path in root.rglob("*.py")
        if path.relative_to(root).parts != ("__init__.py",)
    }


def test_ruff_finds_nothing_in_src_and_tests() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--no-cache", "src", "tests"],
        cwd=REPO, capture_output=True, text=True, timeout=120, check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr


def test_ruff_applies_the_repository_rules(tmp_path: Path) -> None:
    """The configuration in pyproject.toml is the one in force: unsorted imports and a too long line are found."""
    module = tmp_path / "module.py"
    module.write_text("import sys\nimport os\n\nVALUE = '" + "x" * 120 + "'\nprint(os, sys)\n")
    run = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--no-cache", "--config", str(REPO / "pyproject.toml"),
         "--output-format", "concise", str(module)],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert run.returncode == 1, run.stdout + run.stderr
    assert "I001" in run.stdout and "E501" in run.stdout, run.stdout


def test_the_package_keeps_the_import_rules_and_the_module_size_limit() -> None:
    violations = layout_violations(PACKAGE)
    assert not violations, "\n".join(map(str, violations))


def test_every_package_has_its_row_in_the_import_rules() -> None:
    """A new package of src/sluice says what it must not import (else no rule would ever hold it)."""
    packages = packages_under(PACKAGE)
    assert {"quota", "engines", "gateway", "errors"} <= packages
    assert packages - FORBIDDEN_IMPORTS.keys() - UNRESTRICTED == set()


def _write(root: Path, relative: str, source: str) -> None:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(source, encoding="utf-8")


def test_a_forbidden_import_is_found_in_every_form(tmp_path: Path) -> None:
    _write(tmp_path, "__init__.py", "")
    _write(tmp_path, "quota/__init__.py", "from sluice.quota._limits import Limit\n")
    _write(tmp_path, "quota/_limits.py", "\n".join([
        "from __future__ import annotations",
        "from typing import TYPE_CHECKING",
        "import sluice.engines",
        "from sluice.gateway.service import GatewayService",
        "from ..admission import Gate",
        "from .. import cli",
        "from sluice import errors, sim",
        "from . import _scopes",
        "from ._scopes import Scope",
        "if TYPE_CHECKING:",
        "    from sluice.engines._pool import EnginePool",
        "",
    ]))
    _write(tmp_path, "errors.py", "from sluice.clock import Clock\nfrom sluice.config import Settings\n")
    _write(tmp_path, "cli.py", "import sluice.gateway\nfrom sluice.bench import run\n")

    found = sorted((v.module.relative_to(tmp_path).as_posix(), v.line, v.what) for v in layout_violations(tmp_path))

    assert found == [
        ("errors.py", 2, "errors imports sluice.config"),
        ("quota/_limits.py", 3, "quota imports sluice.engines"),
        ("quota/_limits.py", 4, "quota imports sluice.gateway"),
        ("quota/_limits.py", 5, "quota imports sluice.admission"),
        ("quota/_limits.py", 6, "quota imports sluice.cli"),
        ("quota/_limits.py", 7, "quota imports sluice.sim"),
        ("quota/_limits.py", 11, "quota imports sluice.engines"),
    ]


def test_a_module_over_the_size_limit_is_found(tmp_path: Path) -> None:
    _write(tmp_path, "quota/at_limit.py", "x = 1\n" * MAX_MODULE_LINES)
    _write(tmp_path, "quota/over_limit.py", "x = 1\n" * (MAX_MODULE_LINES + 1))

    found = layout_violations(tmp_path)

    assert [(v.module.name, v.line) for v in found] == [("over_limit.py", MAX_MODULE_LINES + 1)]
