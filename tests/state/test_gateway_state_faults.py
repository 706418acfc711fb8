"""A gateway whose Redis is down: every family degrades its own way, through the one state layer. Requests that can
be served are (quota fails open, a cacheable request is a cache miss); what needs Redis answers 503
``state_unavailable`` in OpenAI's shape (admin writes, usage reads); and the degraded gauge goes back to 0 by itself
once Redis is back, with no request to notice it."""

from __future__ import annotations

import httpx
import pytest

from sluice.config import parse_settings
from sluice.identity import hash_key
from tests.conftest import metric_value, serve_gateway, wait_until

KEY, ADMIN = "sk-sluice-state-faults-0123456789", "sk-sluice-state-admin-0123456789"
ASK = {"model": "m", "messages": [{"role": "user", "content": "what is a sluice?"}], "max_tokens": 4}


@pytest.fixture
def gateway(redis):
    settings = parse_settings({
        "state": redis.url,
        "auth": {"admin_key_hash": hash_key(ADMIN)},
        "models": [{"name": "m", "sim": {"speed": 100}, "cache": {"enabled": True, "ttl_s": 60}}],
        "tiers": {"t": {"requests": "1000/hour"}},
        "quota": {"store_retry_s": 0.1},
        "keys": [{"id": "k", "hash": hash_key(KEY), "tier": "t"}],
    })
    with serve_gateway(settings) as live:
        yield live


def post(gateway, path: str, body: dict, key: str = KEY) -> httpx.Response:
    return httpx.post(gateway.url + path, json=body, headers={"authorization": f"Bearer {key}"}, timeout=10)


def degraded(gateway) -> float | None:
    return metric_value(gateway.url, "sluice_quota_store_degraded")


def assert_state_unavailable(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    assert response.headers["x-sluice-reason"] == "state_unavailable"
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "server_error" and error["code"] == "state_unavailable"
    assert "Traceback" not in response.text and "redis://" not in response.text


def test_with_redis_down_cacheable_requests_are_served_and_what_needs_redis_is_503(gateway, redis):
    cached = post(gateway, "/v1/chat/completions", {**ASK, "temperature": 0})
    assert cached.status_code == 200
    redis.kill()
    miss = post(gateway, "/v1/chat/completions", {**ASK, "temperature": 0})
    assert miss.status_code == 200, miss.text  # the cache is a miss, quota fails open: served by the engine
    assert miss.headers.get("x-sluice-cache") != "hit"
    assert_state_unavailable(post(gateway, "/admin/keys", {"id": "new-key", "tier": "t"}, key=ADMIN))
    assert_state_unavailable(post(gateway, "/admin/keys/revoke", {"id": "k"}, key=ADMIN))
    assert_state_unavailable(httpx.get(gateway.url + "/admin/usage", params={"scope": "key", "id": "k"},
                                       headers={"authorization": f"Bearer {ADMIN}"}, timeout=10))
    assert post(gateway, "/v1/chat/completions", ASK).status_code == 200  # the mirror of keys is kept: still known


def test_the_degraded_gauge_goes_back_to_0_with_no_traffic(gateway, redis):
    assert post(gateway, "/v1/chat/completions", ASK).status_code == 200
    assert degraded(gateway) == 0
    redis.kill()
    assert post(gateway, "/v1/chat/completions", ASK).status_code == 200  # fails open; Redis is known down
    assert degraded(gateway) == 1
    redis.start()
    assert wait_until(lambda: degraded(gateway) == 0)  # nothing but /metrics reads is sent meanwhile
    assert metric_value(gateway.url, "sluice_quota_store_degraded_events_total") == 1
    created = post(gateway, "/admin/keys", {"id": "after", "tier": "t"}, key=ADMIN)
    assert created.status_code == 201, created.text


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # uvicorn's exit(3), in its thread
def test_a_gateway_whose_redis_is_unreachable_at_startup_says_so_in_one_line(caplog):
    """No mirror of the issued keys can be read, so the gateway does not serve (it would refuse every issued key):
    it stops at startup with one clear line, not a traceback."""
    from tests.redis_server import free_port

    settings = parse_settings({"state": f"redis://127.0.0.1:{free_port()}/0", "auth": {"mode": "open"},
                               "models": [{"name": "m", "sim": {}}]})
    with pytest.raises(RuntimeError, match="did not start"), serve_gateway(settings, start_timeout_s=20):
        pass
    failed = [r for r in caplog.records if r.getMessage().startswith("gateway startup failed")]
    assert len(failed) == 1 and "state store" in failed[0].getMessage()
    assert failed[0].exc_info is None
