"""``sluice plan`` from the command line: the table, --json, the search for the replicas the targets need."""

from __future__ import annotations

import orjson
import pytest
import yaml

from sluice.cli import main
from sluice.plan import ReplicaRange, SloPolicy, plan_replicas, replay, report
from tests.plan.conftest import HASHES, settings_with, trace_of


def poisson_like(rate_per_s: float, count: int, key: str = "a"):
    """Evenly spread arrivals: deterministic, and the load is what the rate says."""
    return [(i / rate_per_s, key) for i in range(count)]


class Ticking:
    """A clock for the wall time the command measures: each reading a second later."""

    def __init__(self) -> None:
        self.t = 0.0

    def now(self) -> float:
        self.t += 1.0
        return self.t

    def wall(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        raise AssertionError("the command does not sleep")


def test_replicas_auto_finds_the_knee():
    """One replica of 8 seats serves about 12 of these a second; at 30 a second the TTFT target of 0.5 s needs
    more. The count found meets it and one fewer does not."""
    settings = settings_with({"t": {"ttft_slo_s": 0.5, "max_queue_s": 5}}, {"a": ("acme", "t")})
    trace = trace_of(*poisson_like(30, 600), prompt=256, output=64)
    slo = SloPolicy(settings, default_ttft_s=None)
    doc = plan_replicas(settings, trace, ReplicaRange(1, 16), slo, clock=Ticking())
    needed = doc["replicas_needed"]
    assert needed is not None and needed > 1
    assert doc["replay"]["replicas"] == needed and doc["replay"]["meets_slo"] is True
    tried = {t["replicas"]: t["meets_slo"] for t in doc["search"]}
    assert tried[needed] is True and tried[needed - 1] is False
    below = report(replay(settings, trace, replicas=needed - 1), span_s=trace.span_s, slo=slo)
    assert below["tiers"]["t"]["slo_attainment"] < 0.99 <= doc["replay"]["tiers"]["t"]["slo_attainment"]
    assert len(tried) < 16  # it searched, it did not try every count


def test_no_count_in_the_range_is_said_so():
    settings = settings_with({"t": {"ttft_slo_s": 0.5, "max_queue_s": 5}}, {"a": ("acme", "t")})
    trace = trace_of(*poisson_like(30, 300), prompt=256, output=64)
    doc = plan_replicas(settings, trace, ReplicaRange(1, 2), SloPolicy(settings, default_ttft_s=None),
                        clock=Ticking())
    assert doc["replicas_needed"] is None and doc["replay"]["replicas"] == 2
    assert doc["speed"]["simulated_s_per_wall_s"] > 0


@pytest.fixture
def files(tmp_path):
    config = tmp_path / "new.yaml"
    config.write_text(yaml.safe_dump({
        "models": [{"name": "m", "sim": {"max_num_seqs": 8, "num_kv_blocks": 2048}}],
        "tiers": {"free": {"priority": 0, "requests": "30/minute"}, "pro": {"priority": 10, "ttft_slo_s": 1.0}},
        "keys": [{"id": "a", "hash": HASHES["a"], "tenant": "t1", "tier": "free"},
                 {"id": "b", "hash": HASHES["b"], "tenant": "t2", "tier": "pro"}],
    }))
    log = tmp_path / "access.log"
    rows = [{"at": 1_800_000_000 + i / 4, "route": "/v1/chat/completions", "status": 200, "key_id": "ab"[i % 2],
             "model": "m", "stream": True, "prompt_estimate": 200, "max_tokens": 40, "tokens_in": 200,
             "tokens_out": 40} for i in range(200)]
    log.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    return config, log


def test_the_table_names_every_tier_and_tenant(files, capsys):
    config, log = files
    assert main(["plan", "--trace", str(log), "--config", str(config), "--replicas", "1"]) == 0
    out = capsys.readouterr().out
    assert "trace: 200 requests over 49.8 s" in out
    for label in ("tier free", "tier pro", "tenant t1", "tenant t2", "429 quota_requests"):
        assert label in out


def test_json_says_the_same_for_machines(files, capsys):
    config, log = files
    assert main(["plan", "--trace", str(log), "--config", str(config), "--replicas", "1-4", "--json"]) == 0
    doc = orjson.loads(capsys.readouterr().out)
    free = doc["replay"]["tiers"]["free"]
    assert free["requests"] == 100 and free["429"] == 100 - 30 - 24  # a bucket of 30, then one every 2 s for 48 s
    assert free["refusals"] == {"429": {"quota_requests": free["429"]}}
    assert doc["replicas_needed"] == 1 and doc["replay"]["tiers"]["pro"]["meets_slo"] is True
    assert doc["calibration"]["source"].startswith("each model's sim settings")


@pytest.mark.parametrize(("args", "says"), [
    (["--replicas", "0"], "need 1 <= A <= B"),
    (["--replicas", "many"], "a count, a range A-B or auto"),
    (["--replicas", "auto"], None),  # the pro tier has a target: allowed
    (["--model", "nope"], "no such model"),
    (["--attainment", "1.5"], "--attainment is a share"),
])
def test_bad_arguments_are_one_line_errors(files, capsys, args, says):
    config, log = files
    code = main(["plan", "--trace", str(log), "--config", str(config), *args])
    err = capsys.readouterr().err
    if says is None:
        assert code == 0
    else:
        assert code == 2 and says in err and "Traceback" not in err


def test_auto_needs_a_target(files, tmp_path, capsys):
    config, log = files
    doc = yaml.safe_load(config.read_text())
    del doc["tiers"]["pro"]["ttft_slo_s"]
    config.write_text(yaml.safe_dump(doc))
    assert main(["plan", "--trace", str(log), "--config", str(config), "--replicas", "auto"]) == 2
    assert "needs a TTFT target" in capsys.readouterr().err
    assert main(["plan", "--trace", str(log), "--config", str(config), "--replicas", "auto",
                 "--slo-ttft-ms", "800", "--json"]) == 0
    assert orjson.loads(capsys.readouterr().out)["replay"]["tiers"]["pro"]["ttft_target_s"] == 0.8
