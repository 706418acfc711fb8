"""The README's walk-through, run as a new user runs it: its own commands, read from README.md.

Install (CI installs the clone already: the README's install lines are checked against what .ci/run runs), then
`sluice serve` on the embedded default as a real process, the README's curl commands and its OpenAI SDK code against
it, `sluice keys create` into the README's config file, `sluice serve --config` on that file, and the README's loop
of requests up to the 429. The only changes made to the README's text: the port (a free one instead of 8000), and
the placeholders the README tells the reader to fill in (the key and its config line). If a README command stops
working, or the README stops showing a step, this test fails.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml

from tests.conftest import wait_until
from tests.redis_server import free_port

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
README_ADDRESS = "127.0.0.1:8000"


@dataclass(frozen=True)
class Block:
    lang: str
    text: str


def sections() -> dict[str, list[Block]]:
    """README's fenced code blocks, by the ``## `` heading they are under."""
    found: dict[str, list[Block]] = {}
    heading = ""
    for part in re.split(r"^(## .*)$", README.read_text(), flags=re.MULTILINE):
        if part.startswith("## "):
            heading = part[3:].strip()
            continue
        for lang, text in re.findall(r"^```(\w*)\n(.*?)^```", part, flags=re.MULTILINE | re.DOTALL):
            found.setdefault(heading, []).append(Block(lang, text))
    return found


def commands(block: Block) -> list[str]:
    """A bash block's commands: one per line, with backslash continuations joined (a ``for`` loop stays whole)."""
    joined = block.text.replace("\\\n", " ")
    out: list[str] = []
    loop: list[str] = []
    for line in joined.splitlines():
        if not line.strip():
            continue
        if loop or line.lstrip().startswith(("for ", "while ")):
            loop.append(line)
            if line.strip() == "done":
                out.append("\n".join(loop))
                loop = []
            continue
        out.append(line)
    return out


def without_comment(command: str) -> str:
    return re.sub(r"\s+#\s.*$", "", command)


class Walk:
    """Where the walk-through runs: a scratch directory, the ``sluice`` command on PATH, the servers it started."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        bindir = str(Path(sys.executable).parent)
        self.env = {**os.environ, "PATH": bindir + os.pathsep + os.environ.get("PATH", ""), "PYTHONUNBUFFERED": "1"}
        assert shutil.which("sluice", path=self.env["PATH"]), "the `sluice` command is not installed"
        self.servers: list[subprocess.Popen[bytes]] = []

    def run(self, command: str, port: int | None = None) -> str:
        if port is not None:
            command = command.replace(README_ADDRESS, f"127.0.0.1:{port}")
        done = subprocess.run(["bash", "-c", "set -o pipefail\n" + command], cwd=self.tmp, env=self.env,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, f"{command}\n{done.stdout}\n{done.stderr}"
        return done.stdout

    def serve(self, command: str) -> str:
        """Start a README `sluice serve ...` line on a free port; return the base URL once it answers."""
        assert without_comment(command).split()[:2] == ["sluice", "serve"], command
        port = free_port()
        log = open(self.tmp / f"serve-{port}.log", "wb")  # noqa: SIM115 - the process writes it until stopped
        proc = subprocess.Popen([*shlex.split(without_comment(command)), "--port", str(port)], cwd=self.tmp,
                                env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.servers.append(proc)
        url = f"http://127.0.0.1:{port}"

        def up() -> bool:
            try:
                return httpx.get(url + "/health", timeout=2).status_code == 200
            except httpx.HTTPError:
                return proc.poll() is not None

        assert wait_until(up, 60) and proc.poll() is None, (self.tmp / f"serve-{port}.log").read_text()
        return url

    def stop(self) -> None:
        for proc in self.servers:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        self.servers.clear()


@pytest.fixture
def walk(tmp_path: Path) -> Iterator[Walk]:
    w = Walk(tmp_path)
    yield w
    w.stop()


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def test_the_readme_walk_through(walk: Walk) -> None:
    blocks = sections()

    # -- install: the README's lines are the ones CI runs, from the clone -----------------------------------------
    install, tests = blocks["Two commands"][:2]
    first = commands(install)
    assert len(first) == 1 and " && " in first[0], install.text
    pip, serve = (part.strip() for part in first[0].split(" && ", 1))
    assert re.fullmatch(r"pip install (-e )?(\.|'\.\[[\w,]+\]')", pip), pip  # from the clone, not the index
    ci = (ROOT / ".ci" / "run").read_text()
    for line in commands(tests):
        assert without_comment(line) in ci, f"README's `{line}` is not what .ci/run runs"

    # -- serve the embedded default, call it with curl and the SDK ---------------------------------------------------
    url = walk.serve(serve)
    call = blocks["Call it"]
    curls = [c for b in call if b.lang == "bash" for c in commands(b) if c.startswith("curl")]
    assert len(curls) == 2, call
    reply = json.loads(walk.run(curls[0], port_of(url)))
    assert reply["object"] == "chat.completion" and reply["choices"][0]["message"]["content"]
    assert reply["usage"]["completion_tokens"] <= 32
    streamed = walk.run(curls[1], port_of(url))
    events = [line[6:] for line in streamed.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]" and len(events) > 2, streamed
    assert json.loads(events[0])["object"] == "chat.completion.chunk"

    (sdk,) = [b for b in call if b.lang == "python"]
    assert "http://127.0.0.1:8000/v1" in sdk.text
    code = sdk.text.replace(README_ADDRESS, f"127.0.0.1:{port_of(url)}")
    done = subprocess.run([sys.executable, "-c", code], cwd=walk.tmp, env=walk.env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert "CompletionUsage(" in done.stdout and "completion_tokens=" in done.stdout, done.stdout
    walk.stop()

    # -- a key into the README's config file, served, up to the 429 ----------------------------------------------------
    key_blocks = blocks["A key and a limit"]
    (create,) = [c for c in commands(key_blocks[0]) if c.startswith("sluice keys create")]
    printed = walk.run(create)
    key = re.search(r"\bsk-sluice-[\w-]+", printed)
    config_line = re.search(r"^\s*- \{id: .*hash: \"sha256:[0-9a-f]{64}\".*\}$", printed, flags=re.MULTILINE)
    assert key and config_line, printed

    (config,) = [b for b in key_blocks if b.lang == "yaml"]
    name = re.match(r"# (\S+\.yaml)", config.text)
    assert name, config.text
    placeholder = [line for line in config.text.splitlines() if 'hash: "sha256:…"' in line]
    assert len(placeholder) == 1, config.text
    text = config.text.replace(placeholder[0], config_line.group(0))
    (walk.tmp / name.group(1)).write_text(text)
    assert len(yaml.safe_load(text)["keys"]) == 1

    lines = commands(key_blocks[-1])
    (serve_line,) = [c for c in lines if c.startswith("sluice serve")]
    assert name.group(1) in serve_line
    url = walk.serve(serve_line)
    (export,) = [c for c in lines if c.startswith("export SLUICE_API_KEY=")]
    walk.env["SLUICE_API_KEY"] = key.group(0)
    assert "sk-sluice-…" in export  # the placeholder the reader replaces, as the test does
    (loop,) = [c for c in lines if c.startswith("for ")]
    answers = re.split(r"(?=^HTTP/)", walk.run(loop, port_of(url)), flags=re.MULTILINE)
    answers = [a for a in answers if a.strip()]
    statuses = [int(a.split()[1]) for a in answers]
    assert statuses == [200, 200, 200, 429], answers
    headers = [dict(re.findall(r"^([\w-]+):\s*(\S+)", a.lower(), flags=re.MULTILINE)) for a in answers]
    assert [h["x-ratelimit-remaining-requests"] for h in headers] == ["2", "1", "0", "0"]
    assert all(h["x-ratelimit-limit-requests"] == "3" for h in headers)
    assert int(headers[3]["retry-after"]) > 0 and "retry-after" not in headers[0]

    refused = httpx.post(url + "/v1/chat/completions", headers={"authorization": f"Bearer {key.group(0)}"},
                         json={"model": "sluice-sim", "messages": [{"role": "user", "content": "Hello"}]})
    assert refused.status_code == 429
    assert set(refused.json()["error"]) == {"message", "type", "param", "code"}
    assert httpx.post(url + "/v1/chat/completions", json={"model": "sluice-sim", "messages": []}).status_code == 401
