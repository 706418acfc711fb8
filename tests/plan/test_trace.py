"""Reading traces: access logs and bench runs into arrival-ordered requests."""

from __future__ import annotations

import orjson
import pytest

from sluice.errors import ConfigError
from sluice.plan import read_trace


def write_lines(path, rows):
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))


def log_line(at, **fields):
    return {"request_id": "r", "method": "POST", "route": "/v1/chat/completions", "at": at, "status": 200,
            "key_id": "k1", "tenant": "acme", "tier": "pro", "model": "m", "stream": True, "prompt_estimate": 90,
            "max_tokens": 50, "tokens_in": 100, "tokens_out": 20, **fields}


def test_an_access_log_becomes_requests_in_arrival_order_from_the_first(tmp_path):
    path = tmp_path / "access.log"
    write_lines(path, [
        log_line(1000.5, key_id="late"),
        log_line(1000.0, key_id="first"),
        log_line(1000.2, key_id="refused", status=429, reason="quota_requests", tokens_in=None, tokens_out=None),
        {**log_line(1000.3), "route": "/v1/models"},  # not a completion: skipped
        {k: v for k, v in log_line(1000.4).items() if k != "at"},  # written before `at` existed: skipped
        log_line(1000.1, status=400, prompt_estimate=None, tokens_in=None, max_tokens=None),  # never priced
    ])
    trace = read_trace(path)
    assert trace.source == "access_log" and trace.skipped == 3
    assert [(r.key_id, r.at_s) for r in trace.requests] == [("first", 0.0), ("refused", pytest.approx(0.2)),
                                                             ("late", pytest.approx(0.5))]
    first, refused, _ = trace.requests
    assert (first.prompt_tokens, first.max_tokens, first.output_tokens) == (100, 50, 20)  # what it used
    assert (refused.prompt_tokens, refused.output_tokens) == (90, 50)  # priced, and generates what it reserved
    assert (first.tenant, first.tier, first.model, first.stream) == ("acme", "pro", "m", True)


def test_a_bench_run_is_a_trace_with_its_tenants_as_key_ids(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    write_lines(run / "results.jsonl", [
        {"index": 0, "tenant": "alice", "start_s": 0.25, "input_len": 256, "output_len": 64, "status": 200,
         "ok": True, "prompt_tokens": 262, "output_tokens": 64, "ttft_s": 0.1, "tpot_s": 0.01, "e2e_s": 0.7},
        {"index": 1, "tenant": "bob", "start_s": 0.05, "input_len": 256, "output_len": 64, "status": 503,
         "ok": False, "reason": "queue_timeout", "output_tokens": 0},
    ])
    (run / "summary.json").write_bytes(orjson.dumps({"settings": {"model": "sim", "stream": False}}))
    trace = read_trace(run)
    assert trace.source == "bench" and trace.span_s == pytest.approx(0.2)
    bob, alice = trace.requests
    assert (bob.key_id, bob.prompt_tokens, bob.output_tokens, bob.model, bob.stream) == ("bob", 256, 64, "sim", False)
    assert (alice.key_id, alice.prompt_tokens, alice.max_tokens) == ("alice", 262, 64)
    assert bob.tenant is None and bob.tier is None  # the config's keys say


@pytest.mark.parametrize(("content", "says"), [
    (b"", "empty"),
    (b"{not json\n", "not a JSON line"),
    (b"[1, 2]\n", "JSON object"),
    (orjson.dumps({"route": "/v1/chat/completions", "status": 200}) + b"\n", "needs the `at` field"),
])
def test_what_is_not_a_trace_is_said_plainly(tmp_path, content, says):
    path = tmp_path / "trace.jsonl"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=says):
        read_trace(path)


def test_a_missing_trace_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read the trace"):
        read_trace(tmp_path / "nope.log")
