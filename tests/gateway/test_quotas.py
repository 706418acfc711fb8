"""Quotas through a live gateway (memory state): budgets in headers, precise refusals, waiting, reconciliation."""

from __future__ import annotations

import re

import httpx
import openai
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from sluice.config import load_settings
from sluice.identity import hash_key
from tests.conftest import serve_gateway, wait_until

KEYS = {name: f"sk-sluice-test-{name}-0123456789" for name in ("free", "tok", "refund", "conc", "wait", "reload")}
MESSAGES = [{"role": "user", "content": "hello there"}]


def config(tiers: dict) -> dict:
    return {
        "models": [
            {"name": "fast", "sim": {"speed": 100, "output_len_min": 5, "output_len_max": 5}},
            {"name": "slow", "sim": {}},
        ],
        "tiers": tiers,
        "keys": [{"id": f"key-{name}", "hash": hash_key(key), "tier": name, "tenant": f"t-{name}"}
                 for name, key in KEYS.items() if name in tiers],
    }


TIERS = {
    "free": {"requests": "3/hour", "tokens": "100000/hour"},
    "tok": {"tokens": "100/hour"},
    "refund": {"tokens": "300/hour"},
    "conc": {"concurrent": 1},
    "wait": {"requests": {"rate": "5/second", "burst": 1}, "max_wait_s": 5},
}


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    path = tmp_path_factory.mktemp("quota") / "sluice.yaml"
    path.write_text(yaml.safe_dump(config(TIERS)))
    with serve_gateway(load_settings(path)) as live:
        yield live


def client(gateway, tier):
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key=KEYS[tier], max_retries=0)


def test_budget_headers_then_a_precise_429(gateway):
    sdk = client(gateway, "free")
    for remaining in (2, 1, 0):
        raw = sdk.chat.completions.with_raw_response.create(model="fast", messages=MESSAGES, max_tokens=5)
        assert raw.headers["x-ratelimit-limit-requests"] == "3"
        assert raw.headers["x-ratelimit-remaining-requests"] == str(remaining)
        assert re.fullmatch(r"(\d+m)?\d+(\.\d+)?s", raw.headers["x-ratelimit-reset-requests"])
        assert raw.headers["x-ratelimit-limit-tokens"] == "100000"
    with pytest.raises(openai.RateLimitError) as info:
        sdk.chat.completions.create(model="fast", messages=MESSAGES, max_tokens=5)
    err, headers = info.value, info.value.response.headers
    assert err.body["code"] == "rate_limit_exceeded"
    assert re.match(r"Rate limit reached for requests per hour on tier free: Limit 3, Used 3, Requested 1\. "
                    r"Please try again in 19m59(\.\d+)?s\.", err.body["message"]), err.body["message"]
    assert 1190 <= int(headers["retry-after"]) <= 1200  # one request drips back every 20 minutes
    assert abs(int(headers["retry-after-ms"]) / 1000 - int(headers["retry-after"])) <= 1
    assert headers["x-sluice-reason"] == "quota_requests"
    assert headers["x-ratelimit-remaining-requests"] == "0"


def test_a_request_that_can_never_fit_says_so(gateway):
    with pytest.raises(openai.RateLimitError) as info:
        client(gateway, "tok").chat.completions.create(model="fast", messages=MESSAGES, max_tokens=500)
    assert "can never fit" in info.value.message and "Limit 100" in info.value.message
    assert info.value.response.headers["x-should-retry"] == "false"
    assert "retry-after" not in info.value.response.headers


def test_unused_reservation_is_refunded(gateway):
    # 300 tokens an hour; each request reserves prompt + 200 but the engine answers in 5 tokens. Without the
    # refund the second reservation would not fit.
    sdk = client(gateway, "refund")
    first = sdk.chat.completions.create(model="fast", messages=MESSAGES, max_tokens=200)
    assert first.usage.completion_tokens == 5
    second = sdk.chat.completions.with_raw_response.create(model="fast", messages=MESSAGES, max_tokens=200)
    assert second.http_response.status_code == 200
    used_by_first = first.usage.total_tokens
    remaining = int(second.headers["x-ratelimit-remaining-tokens"])
    assert 0 <= remaining <= 300 - used_by_first - 200


def test_concurrency_permit_is_held_while_streaming_and_freed_on_disconnect(gateway):
    headers = {"authorization": f"Bearer {KEYS['conc']}"}
    long = {"model": "slow", "messages": MESSAGES, "max_tokens": 4000, "ignore_eos": True, "stream": True}
    with httpx.Client(base_url=gateway.url, timeout=30, headers=headers) as http:
        with http.stream("POST", "/v1/chat/completions", json=long) as r:
            lines = r.iter_lines()
            next(lines)
            refused = http.post("/v1/chat/completions", json={"model": "fast", "messages": MESSAGES, "max_tokens": 2})
            assert refused.status_code == 429
            assert "Too many concurrent requests on tier conc" in refused.json()["error"]["message"]
            assert refused.headers["x-sluice-reason"] == "quota_concurrent"

        def admitted() -> bool:
            r = http.post("/v1/chat/completions", json={"model": "fast", "messages": MESSAGES, "max_tokens": 2})
            return r.status_code == 200

        assert wait_until(admitted), "the permit of a disconnected stream was not given back"


def test_waits_for_the_bucket_instead_of_refusing(gateway):
    sdk = client(gateway, "wait")
    for _ in range(3):  # burst 1, one request every 200 ms: the 2nd and 3rd wait rather than fail
        assert sdk.chat.completions.create(model="fast", messages=MESSAGES, max_tokens=2).choices
    waits = [s for f in text_string_to_metric_families(httpx.get(gateway.url + "/metrics").text)
             for s in f.samples if s.name == "sluice_quota_wait_seconds_count"]
    assert waits and waits[0].value >= 2


def test_tier_limits_reload_without_restart(tmp_path):
    path = tmp_path / "sluice.yaml"
    path.write_text(yaml.safe_dump(config({"reload": {"requests": "1/hour"}})))
    with serve_gateway(load_settings(path), config_path=path) as live:
        sdk = client(live, "reload")
        sdk.chat.completions.create(model="fast", messages=MESSAGES, max_tokens=2)
        with pytest.raises(openai.RateLimitError):
            sdk.chat.completions.create(model="fast", messages=MESSAGES, max_tokens=2)
        path.write_text(yaml.safe_dump(config({"reload": {"requests": "5/hour"}})))

        def admitted_with_state_kept() -> bool:
            try:
                raw = sdk.chat.completions.with_raw_response.create(model="fast", messages=MESSAGES, max_tokens=2)
            except openai.RateLimitError:
                return False
            return raw.headers["x-ratelimit-remaining-requests"] == "3"  # 5 - the one before - this one

        assert wait_until(admitted_with_state_kept)
