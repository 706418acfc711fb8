"""The admin API on two gateways sharing one real Redis: keys issued on one work on both, a revoked key is
refused everywhere within a second, tiers change live, usage and budgets read back."""

from __future__ import annotations

import httpx
import pytest

from sluice.config import parse_settings
from sluice.identity import hash_key
from tests.conftest import serve_gateway, wait_until

ADMIN = "sk-sluice-admin-0123456789abcdef"
CONFIG_KEY = "sk-sluice-config-0123456789abcdef"
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}


def settings(redis_url):
    return parse_settings({
        "state": redis_url,
        "auth": {"admin_key_hash": hash_key(ADMIN)},
        "models": [{"name": "m", "sim": {"speed": 100, "output_len_min": 3, "output_len_max": 3}}],
        "tiers": {"pro": {"priority": 10, "requests": "100/hour", "tokens": "100000/hour"}, "free": {}},
        "keys": [{"id": "cfg", "hash": hash_key(CONFIG_KEY), "tier": "pro", "tenant": "acme"}],
    })


@pytest.fixture(scope="module")
def two_gateways(redis_server):
    redis_server.flush()
    with serve_gateway(settings(redis_server.url)) as a, serve_gateway(settings(redis_server.url)) as b:
        yield a, b


def admin(gw, method, path, **kw):
    return httpx.request(method, gw.url + path, headers={"authorization": f"Bearer {ADMIN}"}, timeout=10, **kw)


def chat(gw, key):
    return httpx.post(gw.url + "/v1/chat/completions", json=CHAT, headers={"authorization": f"Bearer {key}"},
                      timeout=10)


def test_the_admin_api_needs_the_admin_key(two_gateways):
    a, _ = two_gateways
    assert httpx.get(a.url + "/admin/keys").status_code == 401
    assert httpx.get(a.url + "/admin/keys", headers={"authorization": f"Bearer {CONFIG_KEY}"}).status_code == 401


def test_issue_use_everywhere_then_revoke_everywhere_within_a_second(two_gateways):
    a, b = two_gateways
    created = admin(a, "POST", "/admin/keys", json={"id": "bob", "tenant": "acme", "tier": "pro"})
    assert created.status_code == 201
    key = created.json()["key"]
    assert chat(a, key).status_code == 200
    assert wait_until(lambda: chat(b, key).status_code == 200, timeout_s=1.0)
    listed = {row["id"]: row for row in admin(b, "GET", "/admin/keys").json()["data"]}
    assert listed["bob"]["source"] == "issued" and listed["cfg"]["source"] == "config"
    assert key not in admin(b, "GET", "/admin/keys").text  # only hashes are kept, and not shown

    assert admin(b, "POST", "/admin/keys/revoke", json={"id": "bob"}).json() == {"id": "bob", "revoked": True}
    assert chat(b, key).status_code == 401
    assert wait_until(lambda: chat(a, key).status_code == 401, timeout_s=1.0), "still accepted after a second"
    assert admin(a, "POST", "/admin/keys", json={"id": "bob", "tier": "pro"}).status_code == 409
    assert admin(a, "POST", "/admin/keys/revoke", json={"id": "nobody"}).status_code == 404


def test_a_configured_key_can_be_revoked_too(two_gateways, redis_server):
    a, b = two_gateways
    with serve_gateway(settings(redis_server.url)) as c:
        other = "sk-sluice-config-0123456789abcdef"
        assert chat(c, other).status_code == 200
        assert admin(c, "POST", "/admin/keys/revoke", json={"id": "cfg"}).status_code == 200
        assert wait_until(lambda: chat(a, other).status_code == 401 and chat(b, other).status_code == 401, 1.0)


def test_tier_limits_change_live_on_every_replica(two_gateways):
    a, b = two_gateways
    key = admin(a, "POST", "/admin/keys", json={"id": "carol", "tier": "free"}).json()["key"]
    assert "x-ratelimit-limit-requests" not in chat(b, key).headers  # free has no limits yet
    change = admin(a, "PUT", "/admin/tiers", json={"name": "free", "settings": {"requests": "7/minute"}})
    assert change.status_code == 200
    assert wait_until(lambda: chat(b, key).headers.get("x-ratelimit-limit-requests") == "7", timeout_s=1.0)
    bad = admin(a, "PUT", "/admin/tiers", json={"name": "free", "settings": {"requests": "lots"}})
    assert bad.status_code == 400 and bad.json()["error"]["param"].startswith("settings.requests")
    assert admin(a, "PUT", "/admin/tiers", json={"name": "gold", "settings": {}}).status_code == 404


def test_usage_and_budget_read_back(two_gateways):
    a, b = two_gateways
    key = admin(a, "POST", "/admin/keys", json={"id": "dave", "tenant": "dave-co", "tier": "pro"}).json()["key"]
    answers = [chat(a, key).json()]

    def served_by_b() -> bool:
        r = chat(b, key)  # b learns of the new key within a second
        if r.status_code == 200:
            answers.append(r.json())
        return r.status_code == 200

    assert wait_until(served_by_b, timeout_s=1.0)
    expected_out = sum(doc["usage"]["completion_tokens"] for doc in answers)

    def usage_is_complete() -> bool:
        u = admin(b, "GET", "/admin/usage", params={"scope": "key", "id": "dave"}).json()
        return u["requests"] == 2 and u["tokens_out"] == expected_out

    assert wait_until(usage_is_complete, timeout_s=5.0)
    tenant = admin(a, "GET", "/admin/usage", params={"scope": "tenant", "id": "dave-co"}).json()
    assert tenant["requests"] == 2 and tenant["tokens_in"] > 0
    budget = admin(a, "GET", "/admin/budget", params={"key_id": "dave", "model": "m"}).json()
    requests = next(row for row in budget["limits"] if row["kind"] == "requests")
    assert requests["limit"] == 100 and requests["remaining"] == 98


def test_the_keys_command_uses_the_admin_api(two_gateways, capsys):
    import json as jsonlib

    from sluice.cli import main

    a, b = two_gateways
    assert main(["keys", "create", "--id", "erin", "--tier", "pro", "--url", a.url, "--admin-key", ADMIN]) == 0
    out = capsys.readouterr().out
    assert out.startswith("created key erin (user erin, tenant default, tier pro)\n")
    key = out.rsplit(": ", 1)[1].strip()
    assert chat(a, key).status_code == 200

    def listed_by_b() -> bool:
        assert main(["keys", "list", "--url", b.url, "--admin-key", ADMIN]) == 0
        lines = capsys.readouterr().out.splitlines()
        assert lines[0].split() == ["ID", "USER", "TENANT", "TIER", "SOURCE", "STATE"]  # a table, not JSON
        return ["erin", "erin", "default", "pro", "issued", "active"] in [line.split() for line in lines]

    assert wait_until(listed_by_b, timeout_s=1.0)
    assert main(["keys", "list", "--json", "--url", b.url, "--admin-key", ADMIN]) == 0
    assert "erin" in {row["id"] for row in jsonlib.loads(capsys.readouterr().out)["data"]}  # the raw form

    assert main(["keys", "revoke", "--id", "erin", "--url", b.url, "--admin-key", ADMIN]) == 0
    assert capsys.readouterr().out == "revoked key erin\n"
    assert wait_until(lambda: chat(a, key).status_code == 401, timeout_s=1.0)
    assert main(["keys", "restore", "--id", "erin", "--url", b.url, "--admin-key", ADMIN]) == 0
    assert capsys.readouterr().out == "restored key erin\n"
    assert wait_until(lambda: chat(a, key).status_code == 200, timeout_s=1.0)
    assert main(["keys", "rotate", "--id", "erin", "--url", b.url, "--admin-key", ADMIN]) == 0
    rotated = capsys.readouterr().out.rsplit(": ", 1)[1].strip()
    assert rotated != key and wait_until(lambda: chat(a, rotated).status_code == 200, timeout_s=1.0)

    assert main(["keys", "list", "--url", b.url, "--admin-key", "wrong"]) == 1
    assert capsys.readouterr().err == "sluice: The admin API needs the admin key.\n"  # one line, not a JSON body
    assert main(["keys", "revoke", "--id", "nobody", "--url", b.url, "--admin-key", ADMIN]) == 1
    assert capsys.readouterr().err == "sluice: No key with id 'nobody'.\n"
    assert main(["keys", "revoke", "--json", "--id", "nobody", "--url", b.url, "--admin-key", ADMIN]) == 1
    assert jsonlib.loads(capsys.readouterr().err)["error"]["code"] == "key_not_found"


def test_a_revoked_key_is_restored_and_a_rotated_key_gets_a_new_secret_everywhere(two_gateways):
    a, b = two_gateways
    old = admin(a, "POST", "/admin/keys", json={"id": "frank", "tenant": "f-co", "tier": "pro"}).json()["key"]
    assert wait_until(lambda: chat(b, old).status_code == 200, timeout_s=1.0)
    assert admin(a, "POST", "/admin/keys/revoke", json={"id": "frank"}).status_code == 200
    assert wait_until(lambda: chat(b, old).status_code == 401, timeout_s=1.0)
    restored = admin(b, "POST", "/admin/keys/restore", json={"id": "frank"})
    assert restored.json() == {"id": "frank", "revoked": False}
    assert wait_until(lambda: chat(a, old).status_code == 200, timeout_s=1.0), "still refused after a second"

    rotated = admin(a, "POST", "/admin/keys/rotate", json={"id": "frank"})
    assert rotated.status_code == 200
    doc = rotated.json()
    assert (doc["id"], doc["user"], doc["tenant"], doc["tier"]) == ("frank", "frank", "f-co", "pro")
    new = doc["key"]
    assert new != old and chat(a, new).status_code == 200
    assert chat(a, old).status_code == 401  # the old secret stops at once on the gateway that rotated it
    assert wait_until(lambda: chat(b, old).status_code == 401 and chat(b, new).status_code == 200, timeout_s=1.0)
    listed = [row for row in admin(b, "GET", "/admin/keys").json()["data"] if row["id"] == "frank"]
    assert len(listed) == 1 and not listed[0]["revoked"]  # one key, not two
    assert new not in admin(b, "GET", "/admin/keys").text

    configured = admin(a, "POST", "/admin/keys/rotate", json={"id": "cfg"})
    assert configured.status_code == 409 and configured.json()["error"]["code"] == "key_in_config"
    assert admin(a, "POST", "/admin/keys/rotate", json={"id": "nobody"}).status_code == 404
    assert admin(a, "POST", "/admin/keys/restore", json={"id": "nobody"}).status_code == 404
    admin(a, "POST", "/admin/keys/revoke", json={"id": "frank"})
    refused = admin(a, "POST", "/admin/keys/rotate", json={"id": "frank"})
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "key_revoked"


def error_of(response, status):
    assert response.status_code == status, response.text
    assert response.headers["x-sluice-reason"]
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


def test_usage_and_budget_name_what_is_unknown(two_gateways):
    a, _ = two_gateways
    unknown_key = error_of(admin(a, "GET", "/admin/usage", params={"scope": "key", "id": "ghost"}), 404)
    assert unknown_key["param"] == "id" and "ghost" in unknown_key["message"]
    assert error_of(admin(a, "GET", "/admin/usage", params={"scope": "tenant", "id": "ghost-co"}), 404)
    malformed = error_of(admin(a, "GET", "/admin/usage", params={"scope": "key", "id": "cfg", "day": "yesterday"}),
                         400)
    assert malformed["param"] == "day"
    for day in ("2000-01-01", "2999-01-01"):  # before the kept window, and in the future
        outside = error_of(admin(a, "GET", "/admin/usage", params={"scope": "key", "id": "cfg", "day": day}), 404)
        assert outside["param"] == "day" and outside["code"] == "day_not_found"
    assert admin(a, "POST", "/admin/keys", json={"id": "gina", "tier": "free"}).status_code == 201
    known = admin(a, "GET", "/admin/usage", params={"scope": "key", "id": "gina"})  # known, nothing used: zeros
    assert known.status_code == 200 and known.json()["requests"] == 0

    model = error_of(admin(a, "GET", "/admin/budget", params={"key_id": "cfg", "model": "no-such-model"}), 404)
    assert model["param"] == "model" and "no-such-model" in model["message"]
    ghost = error_of(admin(a, "GET", "/admin/budget", params={"key_id": "ghost", "model": "m"}), 404)
    assert ghost["param"] == "key_id"
    assert error_of(admin(a, "GET", "/admin/budget"), 400)["param"] == "key_id"
