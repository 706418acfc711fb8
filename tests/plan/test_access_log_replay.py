"""A gateway's access log is a trace: it says when each request came, who sent it and what it reserved."""

from __future__ import annotations

import httpx

from sluice.config import parse_settings
from sluice.identity import generate_key, hash_key
from sluice.plan import read_trace, replay
from tests.conftest import serve_gateway, wait_until

FREE, PRO = generate_key(), generate_key()


def test_the_requests_a_gateway_logged_replay_under_the_same_policy(tmp_path):
    log = tmp_path / "access.jsonl"
    settings = parse_settings({
        "server": {"access_log_path": str(log)},
        "models": [{"name": "m", "sim": {"speed": 50}}],
        "tiers": {"free": {"priority": 0, "requests": {"rate": "2/minute", "burst": 2}}, "pro": {"priority": 10}},
        "keys": [{"id": "free-key", "hash": hash_key(FREE), "tenant": "acme", "tier": "free"},
                 {"id": "pro-key", "hash": hash_key(PRO), "tenant": "globex", "tier": "pro"}],
    })
    sent = [(FREE, False), (PRO, True), (FREE, False), (FREE, False), (PRO, False)]
    with serve_gateway(settings) as live:
        statuses = []
        for key, stream in sent:
            body = {"model": "m", "messages": [{"role": "user", "content": "one two three four"}], "max_tokens": 5,
                    "stream": stream}
            resp = httpx.post(live.url + "/v1/chat/completions", json=body,
                              headers={"authorization": f"Bearer {key}"}, timeout=30)
            statuses.append(resp.status_code)
        assert statuses == [200, 200, 200, 429, 200]
        assert wait_until(lambda: log.exists() and len(log.read_text().splitlines()) >= len(sent))
    trace = read_trace(log)
    assert [r.key_id for r in trace.requests] == ["free-key", "pro-key", "free-key", "free-key", "pro-key"]
    times = [r.at_s for r in trace.requests]
    assert times[0] == 0.0 and times == sorted(times)
    refused = trace.requests[3]
    assert refused.max_tokens == 5 and refused.prompt_tokens > 0  # priced at admission, though it never ran
    assert [r.stream for r in trace.requests] == [stream for _, stream in sent]
    result = replay(settings, trace, replicas=1)
    assert [o.status for o in result.outcomes] == statuses
    assert [o.reason for o in result.outcomes][3] == "quota_requests"
