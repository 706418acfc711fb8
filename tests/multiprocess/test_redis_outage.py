"""Redis killed in the middle of a run: no crash; fail-open limits fall back to local buckets, fail-closed ones
refuse with 503; degraded mode shows in metrics and ends by itself once Redis is back."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

from sluice.config import parse_settings
from sluice.identity import hash_key
from tests.conftest import serve_gateway, wait_until

OPEN_KEY, CLOSED_KEY = "sk-sluice-outage-open-0123456789", "sk-sluice-outage-closed-0123456789"
BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}


def call(gateway, key):
    return httpx.post(gateway.url + "/v1/chat/completions", json=BODY, headers={"authorization": f"Bearer {key}"},
                      timeout=10)


def degraded(gateway) -> float:
    for family in text_string_to_metric_families(httpx.get(gateway.url + "/metrics").text):
        for sample in family.samples:
            if sample.name == "sluice_quota_store_degraded":
                return sample.value
    raise AssertionError("no degraded gauge")


def test_redis_outage_and_recovery(redis):
    settings = parse_settings({
        "state": redis.url,
        "models": [{"name": "m", "sim": {"speed": 100}}],
        "tiers": {
            "open": {"requests": "1000/hour"},
            "closed": {"limits": [{"per": "key", "requests": "1000/hour", "on_store_error": "closed"}]},
        },
        "quota": {"gateway_replicas": 2, "store_retry_s": 0.2},
        "keys": [{"id": "open", "hash": hash_key(OPEN_KEY), "tier": "open"},
                 {"id": "closed", "hash": hash_key(CLOSED_KEY), "tier": "closed"}],
    })
    with serve_gateway(settings) as gateway:
        first = call(gateway, OPEN_KEY)
        assert first.status_code == 200 and first.headers["x-ratelimit-limit-requests"] == "1000"
        assert call(gateway, CLOSED_KEY).status_code == 200
        assert degraded(gateway) == 0

        redis.kill()
        during = call(gateway, OPEN_KEY)
        assert during.status_code == 200, during.text  # fail open: a local bucket at the limit / 2 gateways
        assert during.headers["x-ratelimit-remaining-requests"] == "499"
        refused = call(gateway, CLOSED_KEY)
        assert refused.status_code == 503 and refused.headers["x-sluice-reason"] == "quota_store_unavailable"
        assert degraded(gateway) == 1
        assert httpx.get(gateway.url + "/health").status_code == 200

        redis.start()  # same port, empty: the script is loaded again on NOSCRIPT
        assert wait_until(lambda: call(gateway, CLOSED_KEY).status_code == 200)
        assert degraded(gateway) == 0
        back = call(gateway, OPEN_KEY)
        assert back.status_code == 200 and back.headers["x-ratelimit-remaining-requests"] == "999"
