"""The documentation as a new user reads it: install commands that work from a clone, tables that render,
links that stay inside the repository and lead somewhere."""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).parents[1]
DOCS = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")])
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]
EXTRAS = set(PROJECT.get("optional-dependencies", {}))
DEPENDENCIES = {Requirement(r).name.lower() for r in PROJECT.get("dependencies", [])} | {
    Requirement(r).name.lower() for reqs in PROJECT.get("optional-dependencies", {}).values() for r in reqs}
FENCE = re.compile(r"^\s*(```|~~~)")


def _ids(paths: list[Path]) -> list[str]:
    return [str(p.relative_to(ROOT)) for p in paths]


def prose_lines(path: Path) -> list[tuple[int, str, bool]]:
    """(line number, text, inside a fenced code block) for every line of a markdown file."""
    fenced, out = False, []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if FENCE.match(line):
            fenced = not fenced
            continue
        out.append((number, line, fenced))
    return out


def pip_installs(text: str) -> list[list[str]]:
    """The arguments of each ``pip install`` in ``text`` (a shell line or prose with the command in backticks)."""
    commands = []
    for match in re.finditer(r"pip install ([^`\n]*)", text):
        command = re.split(r"\s(?:&&|\|\||;|#)", match.group(1))[0]
        commands.append(shlex.split(command))
    return commands


def install_problem(arguments: list[str]) -> str | None:
    """Why ``pip install ARGUMENTS`` would not work from a clone of this repository, or None."""
    targets = [a for a in arguments if not a.startswith("-")]
    if not targets:
        return "installs nothing"
    for target in targets:
        if target.startswith((".", "/")):
            extras = re.fullmatch(r"[^\[]*(?:\[([^\]]*)\])?", target)
            wanted = {e.strip() for e in (extras.group(1) or "").split(",") if e.strip()} if extras else set()
            if wanted - EXTRAS:
                return f"{target}: no extra {sorted(wanted - EXTRAS)} in pyproject.toml (it has {sorted(EXTRAS)})"
            continue
        name = Requirement(target).name.lower()
        if name == PROJECT["name"].lower():
            return (f"{target}: '{name}' on the package index is another project; from a clone: "
                    "pip install -e '.[extra]'")
        if name not in DEPENDENCIES:
            return f"{target}: not a dependency named in pyproject.toml"
    return None


@pytest.mark.parametrize("path", DOCS, ids=_ids(DOCS))
def test_every_pip_install_in_the_docs_works_from_a_clone(path: Path) -> None:
    problems = [f"{path.name}:{n}: pip install {' '.join(args)}: {why}"
                for n, line, _ in prose_lines(path) for args in pip_installs(line)
                if (why := install_problem(args)) is not None]
    assert not problems, "\n".join(problems)


def test_the_install_check_refuses_what_would_fetch_another_project() -> None:
    assert install_problem(shlex.split("'sluice[bench]'")) is not None
    assert install_problem(shlex.split("-e '.[nope]'")) is not None
    assert install_problem(shlex.split("leftpad")) is not None
    assert install_problem(shlex.split("-e '.[bench]'")) is None
    assert install_problem(shlex.split(".")) is None


def table_rows(path: Path) -> list[list[tuple[int, int]]]:
    """Each markdown table outside code blocks: (line number, cell count) for every row, the header first."""
    tables: list[list[tuple[int, int]]] = []
    current: list[tuple[int, int]] = []
    for number, line, fenced in [*prose_lines(path), (0, "", False)]:
        if not fenced and line.lstrip().startswith("|"):
            current.append((number, len(cells(line))))
        elif current:
            if len(current) >= 2:
                tables.append(current)
            current = []
    return tables


def cells(row: str) -> list[str]:
    """A row's cells as GitHub splits them: on every pipe not escaped, in a code span too (GFM's table rule)."""
    body = row.strip()
    body = body[1:] if body.startswith("|") else body
    body = body[:-1] if body.endswith("|") and not body.endswith("\\|") else body
    return re.split(r"(?<!\\)\|", body)


@pytest.mark.parametrize("path", DOCS, ids=_ids(DOCS))
def test_every_table_row_has_as_many_cells_as_its_header(path: Path) -> None:
    wrong = [f"{path.name}:{number}: {count} cells, the header has {table[0][1]}"
             for table in table_rows(path) for number, count in table[1:] if count != table[0][1]]
    assert not wrong, "\n".join(wrong)


def test_the_cell_counter_splits_as_github_does() -> None:
    assert len(cells("| a | b |")) == 2
    assert len(cells("| `a|b` | c |")) == 3  # a pipe in a code span splits too, unless escaped
    assert len(cells(r"| `a\|b` | c |")) == 2
    assert len(cells(r"| a \| b | c |")) == 2
    assert len(cells("| a | b | c |")) == 3


LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


@pytest.mark.parametrize("path", DOCS, ids=_ids(DOCS))
def test_relative_links_stay_in_the_repository_and_lead_somewhere(path: Path) -> None:
    problems = []
    for number, line, fenced in prose_lines(path):
        if fenced:
            continue
        targets = [m.group(1) for m in LINK.finditer(line)]
        targets += [m.group(1) for m in re.finditer(r"`(\.\./[^`]+)`", line)]  # a path named, not linked
        for target in targets:
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue
            resolved = (path.parent / target.split("#")[0]).resolve()
            if not resolved.is_relative_to(ROOT):
                problems.append(f"{path.name}:{number}: {target} is outside the repository")
            elif not resolved.exists():
                problems.append(f"{path.name}:{number}: {target} does not exist")
    assert not problems, "\n".join(problems)


def test_the_design_the_readme_links_names_every_package_of_the_code() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "[docs/design-notes.md](docs/design-notes.md)" in readme
    design = (ROOT / "docs" / "design-notes.md").read_text()
    parts = [p.name for p in (ROOT / "src" / "sluice").iterdir()
             if (p.is_dir() and (p / "__init__.py").exists()) or (p.suffix == ".py" and p.name != "__init__.py")]
    missing = [name for name in sorted(parts) if f"`{name}`" not in design]
    assert not missing, f"docs/design-notes.md does not describe {missing}"
    for step in ("identify", "price", "quota", "admission", "route"):
        assert f"| {step} |" in design  # the pipeline's table
