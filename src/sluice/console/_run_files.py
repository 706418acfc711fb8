"""The load tests' runs directory, shared by every gateway process on the machine (``--workers N``: each worker
has its own console, and any of them may answer the page's next call).

- a run's number is claimed atomically (``.claims/<n>``, created with O_EXCL): two workers never give one number;
- an ended run is its directory ``<n>-<UTC stamp>/`` (summary.json, results.jsonl, plots): any worker reads it;
- a running run's progress is ``.running/<n>.json``, rewritten every second by the worker that runs it; another
  worker shows it (while it is fresh) and asks it to stop by creating ``.running/<n>.stop``;
- only the last ``keep_runs`` run directories stay (older ones deleted, with their claims).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

from sluice.clock import Clock

PROGRESS_FRESH_S = 10.0  # a progress file older than this belongs to a run whose worker died


class RunFiles:
    def __init__(self, runs_dir: Path, clock: Clock, keep_runs: int) -> None:
        self.runs_dir = runs_dir
        self._clock = clock
        self._keep_runs = keep_runs

    def ended(self) -> list[tuple[int, Path]]:
        """The ended runs' directories (``<number>-<stamp>`` holding a summary.json), with their numbers."""
        found = []
        for path in self.runs_dir.glob("*/summary.json") if self.runs_dir.is_dir() else ():
            number, _, stamp = path.parent.name.partition("-")
            if number.isdigit() and stamp:
                found.append((int(number), path.parent))
        return sorted(found)

    def claim_number(self, at_least: int) -> int:
        """The next run number no process on this directory has taken (``at_least`` or above)."""
        claims = self.runs_dir / ".claims"
        claims.mkdir(parents=True, exist_ok=True)
        taken = [int(p.name) for p in claims.iterdir() if p.name.isdigit()] + [n for n, _ in self.ended()]
        number = max([at_least - 1, *taken]) + 1
        while True:
            try:
                os.close(os.open(claims / str(number), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
                return number
            except FileExistsError:
                number += 1

    def write_progress(self, number: int, doc: dict[str, Any]) -> None:
        """The running run's description, replaced whole (written aside, then renamed)."""
        running = self.runs_dir / ".running"
        running.mkdir(parents=True, exist_ok=True)
        partial = running / f"{number}.json.part"
        partial.write_text(json.dumps(doc))
        partial.replace(running / f"{number}.json")

    def running_elsewhere(self, own: set[int]) -> list[dict[str, Any]]:
        """The fresh progress of runs other processes run (those not in ``own``)."""
        running = self.runs_dir / ".running"
        docs = []
        now_wall = self._clock.wall()
        for path in running.glob("*.json") if running.is_dir() else ():
            if not path.stem.isdigit() or int(path.stem) in own:
                continue
            try:
                if now_wall - path.stat().st_mtime > PROGRESS_FRESH_S:
                    continue
                docs.append(json.loads(path.read_text()))
            except (OSError, ValueError):
                continue
        return docs

    def end_progress(self, number: int) -> None:
        for name in (f"{number}.json", f"{number}.stop"):
            with contextlib.suppress(FileNotFoundError):
                (self.runs_dir / ".running" / name).unlink()

    def ask_stop(self, number: int) -> None:
        (self.runs_dir / ".running" / f"{number}.stop").touch()

    def stop_asked(self, number: int) -> bool:
        return (self.runs_dir / ".running" / f"{number}.stop").exists()

    def prune(self) -> list[int]:
        """Delete the oldest run directories beyond the last ``keep_runs`` (and their claims); their numbers."""
        ended = self.ended()
        gone = ended[:max(0, len(ended) - self._keep_runs)]
        for number, path in gone:
            shutil.rmtree(path, ignore_errors=True)
            with contextlib.suppress(FileNotFoundError):
                (self.runs_dir / ".claims" / str(number)).unlink()
        return [number for number, _ in gone]
