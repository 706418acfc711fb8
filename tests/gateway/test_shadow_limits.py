"""Shadow limits through the gateway, on two gateways sharing one real Redis (the first with its console): every
request served while the shadow counts who it would refuse (metric, access log with the request id, console
snapshot), the shadow set and dropped at run time, and promoted live from the admin API: enforced on both gateways
after."""

from __future__ import annotations

import httpx
import orjson
import pytest

from sluice.config import Settings
from sluice.identity import hash_key
from tests.conftest import metric_value, serve_gateway, wait_until
from tests.console.console_server import logged_in, serve_console

ADMIN = "sk-sluice-admin-0123456789abcdef"
FREE_KEY = "sk-sluice-free-0123456789abcdef00"
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}


def config(redis_url: str, access_log_path: str) -> Settings:
    return Settings.model_validate({
        "state": redis_url,
        "server": {"access_log_path": access_log_path, "access_log_flush_s": 0},
        "auth": {"admin_key_hash": hash_key(ADMIN)},
        "models": [{"name": "m", "sim": {"speed": 1000, "output_len_min": 3, "output_len_max": 3}}],
        "tiers": {"free": {"requests": "20/hour", "shadow": {"requests": "2/hour"}},
                  "pro": {"requests": "100/hour"}},
        "keys": [{"id": "free-key", "hash": hash_key(FREE_KEY), "tier": "free"}],
    })


@pytest.fixture
def gateways(redis_server, tmp_path):
    redis_server.flush()
    log_a = tmp_path / "access-a.log"
    with serve_console(config(redis_server.url, str(log_a))) as a, \
            serve_gateway(config(redis_server.url, str(tmp_path / "access-b.log"))) as b:
        yield a, b, log_a


def admin(gw, method, path, **kw):
    return httpx.request(method, gw.url + path, headers={"authorization": f"Bearer {ADMIN}"}, timeout=10, **kw)


def chat(gw, request_id: str) -> httpx.Response:
    return httpx.post(gw.url + "/v1/chat/completions", json=CHAT, timeout=10,
                      headers={"authorization": f"Bearer {FREE_KEY}", "x-request-id": request_id})


def shadow_of(gw, tier: str):
    return {row["name"]: row for row in admin(gw, "GET", "/admin/tiers").json()["data"]}[tier]["settings"]["shadow"]


def test_shadow_counts_serves_everyone_and_is_promoted_live_on_every_gateway(gateways):
    a, b, log_a = gateways
    answers = [chat(a, f"shadow-{i}") for i in range(4)]
    assert [r.status_code for r in answers] == [200] * 4  # live: 20/hour; the shadow's 2/hour never refuses
    assert metric_value(a.url, "sluice_shadow_refusals_total", tier="free", scope="key", limit="requests") == 2
    lines = [orjson.loads(line) for line in log_a.read_text().splitlines()]
    noted = {line["request_id"]: line.get("shadow") for line in lines if line["route"] == "/v1/chat/completions"}
    assert noted == {"shadow-0": None, "shadow-1": None, "shadow-2": "quota_requests on tier free",
                     "shadow-3": "quota_requests on tier free"}
    console, csrf = logged_in(a.url, ADMIN)
    token = {"x-sluice-csrf": csrf}
    snapshot = console.get("/console/api/snapshot", headers=token).json()
    shadowed = [r for r in snapshot["traffic"]["refusals"] if r["shadow"]]
    assert sorted(r["request_id"] for r in shadowed) == ["shadow-2", "shadow-3"]
    assert {(r["tier"], r["scope"], r["limit"]) for r in shadowed} == {("free", "key", "requests")}
    assert snapshot["tiers"]["free"]["shadow"]["requests"]["amount"] == 2

    promoted = console.post("/console/admin/tiers/free/shadow/promote", headers=token)  # the console's mirror
    assert promoted.status_code == 200, promoted.text
    assert promoted.json()["settings"]["requests"]["amount"] == 2 and promoted.json()["settings"]["shadow"] is None
    # On the other gateway too, through the shared directory: the 4 requests already taken exceed 2/hour.
    assert wait_until(lambda: chat(b, "after").status_code == 429, timeout_s=3.0)
    refused = chat(b, "after-2")
    assert refused.headers["x-sluice-reason"] == "quota_requests"
    assert refused.json()["error"]["type"] == "requests"
    assert chat(a, "after-3").status_code == 429
    assert shadow_of(b, "free") is None
    again = admin(b, "POST", "/admin/tiers/free/shadow/promote")  # nothing left to promote
    assert again.status_code == 409 and again.json()["error"]["code"] == "no_shadow"


def test_a_shadow_is_set_and_dropped_at_run_time(gateways):
    a, b, _ = gateways
    put = admin(a, "PUT", "/admin/tiers/pro/shadow", json={"requests": "5/hour", "concurrent": 1})
    assert put.status_code == 200, put.text
    assert put.json()["settings"]["shadow"]["requests"]["amount"] == 5
    assert wait_until(lambda: (shadow_of(b, "pro") or {}).get("concurrent") == 1, timeout_s=3.0)
    dropped = admin(b, "DELETE", "/admin/tiers/pro/shadow")
    assert dropped.status_code == 200 and dropped.json()["settings"]["shadow"] is None
    assert wait_until(lambda: shadow_of(a, "pro") is None, timeout_s=3.0)
    assert admin(a, "POST", "/admin/tiers/pro/shadow/promote").status_code == 409


BAD_CHANGES = [
    ("PUT", "/admin/tiers/free/shadow", {}, 400, None),  # a shadow that changes nothing
    ("PUT", "/admin/tiers/free/shadow", {"requests": "lots"}, 400, "requests"),
    ("PUT", "/admin/tiers/free/shadow", {"priority": 9}, 400, "priority"),  # a shadow changes limits only
    ("PUT", "/admin/tiers/gold/shadow", {"requests": "1/hour"}, 404, "name"),
    ("POST", "/admin/tiers/gold/shadow/promote", None, 404, "name"),
    ("DELETE", "/admin/tiers/gold/shadow", None, 404, "name"),
]


def test_bad_shadow_changes_are_openai_shaped_errors(gateways):
    a, _, _ = gateways
    for method, path, body, status, param in BAD_CHANGES:
        sent = {"json": body} if body is not None else {}
        answer = admin(a, method, path, **sent)
        assert answer.status_code == status, (method, path, answer.text)
        error = answer.json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and "Traceback" not in error["message"]
        if param is not None:
            assert error["param"] == param
        assert answer.headers.get("x-sluice-reason")
        assert httpx.request(method, a.url + path, timeout=10, **sent).status_code == 401  # no admin key
    assert shadow_of(a, "free")["requests"]["amount"] == 2  # nothing changed
