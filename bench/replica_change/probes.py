"""What the benchmark does to the gateway and reads of the simulators: the admin calls that take replica C in and
out (each checked), C's /metrics over one kept-alive connection, the first request C gets after a change."""

from __future__ import annotations

import http.client
import json
import time
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import urlsplit

from bench.harness import MODEL

SETTLE_S = 0.2  # after a change that takes C out, the requests already sent to C have ended by then
FIRST_REQUEST_TIMEOUT_S = 0.4
PATHS = {("add-remove", True): "/admin/replicas", ("add-remove", False): "/admin/replicas/remove",
         ("drain-undrain", True): "/admin/replicas/undrain", ("drain-undrain", False): "/admin/replicas/drain"}


def fetch(url: str, body: dict[str, Any] | None = None, key: str = "", timeout_s: float = 10.0) -> tuple[int, str]:
    """One GET (or POST of ``body``): its status and text, an HTTP error's included."""
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data, headers=headers), timeout=timeout_s) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


def metric_sum(text: str, name: str, **labels: str) -> float:
    """The sum of every sample of ``name`` (whatever its other labels) whose labels include ``labels``."""
    total = 0.0
    wanted = [f'{k}="{v}"' for k, v in labels.items()]
    for line in text.splitlines():
        if line.startswith(name) and line[len(name)] in "{ " and all(w in line for w in wanted):
            total += float(line.rsplit(" ", 1)[1])
    return total


class SimMetrics:
    """One simulator's /metrics, read over one kept-alive connection (a read costs a request, not a handshake)."""

    def __init__(self, sim_url: str) -> None:
        self.url = sim_url
        self._conn = http.client.HTTPConnection(urlsplit(sim_url).netloc, timeout=10)

    def counter(self, name: str) -> float:
        self._conn.request("GET", "/metrics")
        response = self._conn.getresponse()
        return metric_sum(response.read().decode(), name)

    def prompt_tokens(self) -> float:
        """Counted when a request is prefilled: at once, at this speed, when it reaches the simulator."""
        return self.counter("vllm:prompt_tokens_total")

    def finished_requests(self) -> float:
        return self.counter("vllm:request_success_total")

    def close(self) -> None:
        self._conn.close()


def first_request(sim: SimMetrics, before: float, answered_at: float, load_ends_at: float) -> dict[str, Any]:
    """Read C's counter in a loop until it passes ``before``: C's first request landed between the last read that
    did not see it and the read that did (bounds from the admin call's answer). None if none came within the
    timeout; ``load_ended`` if wrk's run ended before then (an answer that late is counted apart, not missing)."""
    last_miss, reads = answered_at, 0
    until = answered_at + FIRST_REQUEST_TIMEOUT_S
    while (sent := time.monotonic()) < until:
        reads += 1
        if sim.prompt_tokens() > before:
            return {"low_ms": 1e3 * (last_miss - answered_at), "high_ms": 1e3 * (time.monotonic() - answered_at),
                    "reads": reads}
        last_miss = sent
    return {"low_ms": None, "high_ms": None, "reads": reads, "load_ended": load_ends_at < until}


class Changer:
    """Takes replica C in and out of the model's set through the admin API, one change per call, each checked."""

    def __init__(self, gateway: str, admin_key: str, sim_url: str, kind: str) -> None:
        self.gateway, self.key, self.sim, self.kind = gateway, admin_key, sim_url, kind
        self.load_ends_at = float("inf")  # when the round's wrk run ends (set by the round)
        self.metrics = SimMetrics(sim_url)
        self.inside = False
        self.changes: list[dict[str, Any]] = []
        self._out_since: float | None = None  # C's finished requests SETTLE_S after it was last taken out

    def call(self, path: str) -> tuple[int, dict[str, Any], float, float]:
        sent = time.monotonic()
        status, text = fetch(self.gateway + path, {"model": MODEL, "url": self.sim}, self.key)
        answered = time.monotonic()
        doc: dict[str, Any] = json.loads(text) if text.startswith("{") else {"text": text[:300]}
        return status, doc, sent, answered

    def prepare(self) -> None:
        """drain-undrain starts with C in the set (added through the admin API, as add-remove does)."""
        if self.kind == "drain-undrain":
            self._expect("/admin/replicas")
            self.inside = True

    def finish(self) -> None:
        """Back to {A, B} for the next round."""
        self._count_stray()
        if self.kind == "drain-undrain":
            if not self.inside:
                self._expect("/admin/replicas/undrain")
            self._expect("/admin/replicas/remove")
        elif self.inside:
            self._expect("/admin/replicas/remove")
        self.inside = False
        self.metrics.close()

    def change(self) -> None:
        self._count_stray()
        bring_in = not self.inside
        path = PATHS[(self.kind, bring_in)]
        before = self.metrics.prompt_tokens()
        status, doc, sent, answered = self.call(path)
        state = {r["url"]: r["state"] for r in doc.get("replicas", [])}.get(self.sim, "gone")
        record: dict[str, Any] = {"path": path, "status": status, "admin_ms": 1e3 * (answered - sent),
                                  "c_state_in_answer": state, "ok": status == 200 and (state == "active") == bring_in}
        if not record["ok"]:
            record["answer"] = doc
        self.changes.append(record)
        self.inside = bring_in
        if bring_in:
            record["first_request"] = first_request(self.metrics, before, answered, self.load_ends_at)
        else:
            time.sleep(max(0.0, answered + SETTLE_S - time.monotonic()))
            self._out_since = self.metrics.finished_requests()

    def _count_stray(self) -> None:
        """The requests C finished since SETTLE_S after it was taken out: new requests a replica out got (0)."""
        if self._out_since is not None:
            self.changes[-1]["stray_requests"] = self.metrics.finished_requests() - self._out_since
            self._out_since = None

    def _expect(self, path: str) -> None:
        status, doc, _, _ = self.call(path)
        if status != 200:
            raise RuntimeError(f"{path} {self.sim}: HTTP {status}: {doc}")


class Control:
    """The steady rounds' yardstick for the first-request figure: at each tick, the same read loop on A (always in
    the set, about half the traffic), from a moment to A's next request: what the measure reads without a change."""

    def __init__(self, sim_url: str) -> None:
        self.metrics = SimMetrics(sim_url)
        self.changes: list[dict[str, Any]] = []
        self.load_ends_at = float("inf")

    def prepare(self) -> None:
        pass

    def change(self) -> None:
        before = self.metrics.prompt_tokens()
        self.changes.append({"ok": True, "first_request": first_request(self.metrics, before, time.monotonic(),
                                                                            self.load_ends_at)})

    def finish(self) -> None:
        self.metrics.close()
