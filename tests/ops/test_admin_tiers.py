"""Tiers through the admin API, on gateways sharing one real Redis: PATCH changes only the fields given, PUT
replaces the tier, GET says where each setting comes from, tiers are created and deleted (not while a key uses
one), and the rule between file and live: a live change holds until the file's entry for that tier changes."""

from __future__ import annotations

import logging
import os

import httpx
import pytest
import yaml

from sluice.identity import hash_key
from tests.conftest import serve_gateway, wait_until

ADMIN = "sk-sluice-admin-0123456789abcdef"
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}


def config(redis_url, free_requests="50/hour", pro_priority=10):
    return {
        "state": redis_url,
        "auth": {"admin_key_hash": hash_key(ADMIN)},
        "models": [{"name": "m", "sim": {"speed": 100, "output_len_min": 3, "output_len_max": 3}}],
        "tiers": {"pro": {"priority": pro_priority, "requests": "100/hour", "tokens": "100000/hour", "concurrent": 4},
                  "free": {"requests": free_requests}},
        "keys": [{"id": "cfg", "hash": hash_key("sk-sluice-config-0123456789abcdef"), "tier": "pro"}],
    }


def write(path, doc):
    before = path.stat().st_mtime if path.exists() else 0.0
    path.write_text(yaml.safe_dump(doc))
    os.utime(path, (before + 5, before + 5))  # a new stamp, whatever the file system's time granularity


@pytest.fixture
def gateways(redis_server, tmp_path):
    from sluice.config import load_settings

    redis_server.flush()
    path = tmp_path / "sluice.yaml"
    write(path, config(redis_server.url))
    with serve_gateway(load_settings(path), config_path=path) as a, serve_gateway(load_settings(path)) as b:
        yield a, b, path, redis_server.url


def admin(gw, method, path, **kw):
    return httpx.request(method, gw.url + path, headers={"authorization": f"Bearer {ADMIN}"}, timeout=10, **kw)


def tiers(gw):
    return {row["name"]: row for row in admin(gw, "GET", "/admin/tiers").json()["data"]}


def chat_headers(gw, key):
    return httpx.post(gw.url + "/v1/chat/completions", json=CHAT, headers={"authorization": f"Bearer {key}"},
                      timeout=10).headers


def test_patch_changes_only_the_fields_given_and_put_replaces(gateways):
    a, b, _, _ = gateways
    key = admin(a, "POST", "/admin/keys", json={"id": "k", "tier": "pro"}).json()["key"]
    listed = tiers(b)["pro"]
    assert listed["origin"] == "file" and listed["sources"]["requests"] == "file"
    assert listed["sources"]["weight"] == "default"

    patched = admin(a, "PATCH", "/admin/tiers", json={"name": "pro", "settings": {"requests": "7/minute"}})
    assert patched.status_code == 200
    settings = patched.json()["settings"]
    assert settings["requests"]["amount"] == 7 and settings["tokens"]["amount"] == 100000
    assert settings["concurrent"] == 4 and settings["priority"] == 10  # kept from the file

    def b_has_it() -> bool:
        row = tiers(b)["pro"]
        return row["origin"] == "file+live" and row["settings"]["requests"]["amount"] == 7

    assert wait_until(b_has_it, timeout_s=1.0)
    row = tiers(b)["pro"]
    assert row["sources"]["requests"] == "live" and row["sources"]["tokens"] == "file"
    assert row["sources"]["concurrent"] == "file" and not row["replaced"]
    assert wait_until(lambda: chat_headers(b, key).get("x-ratelimit-limit-requests") == "7", timeout_s=1.0)
    assert chat_headers(b, key)["x-ratelimit-limit-tokens"] == "100000"

    again = admin(a, "PATCH", "/admin/tiers", json={"name": "pro", "settings": {"tokens": None}})  # null clears
    assert again.json()["settings"]["tokens"] is None and again.json()["settings"]["requests"]["amount"] == 7

    replaced = admin(a, "PUT", "/admin/tiers", json={"name": "pro", "settings": {"requests": "5/minute"}})
    assert replaced.status_code == 200
    whole = replaced.json()["settings"]
    assert whole["requests"]["amount"] == 5 and whole["tokens"] is None and whole["concurrent"] is None
    assert whole["priority"] == 0  # PUT: what is not given takes its default, not the file's value
    assert tiers(a)["pro"]["replaced"] and tiers(a)["pro"]["sources"]["priority"] == "default"

    bad = admin(a, "PATCH", "/admin/tiers", json={"name": "pro", "settings": {"requests": "lots"}})
    assert bad.status_code == 400 and bad.json()["error"]["param"].startswith("settings.requests")
    assert tiers(a)["pro"]["settings"]["requests"]["amount"] == 5  # a refused change changes nothing
    assert admin(a, "PATCH", "/admin/tiers", json={"name": "gold", "settings": {}}).status_code == 404


def test_tiers_are_created_and_deleted_but_not_while_a_key_uses_them(gateways):
    a, b, _, _ = gateways
    created = admin(a, "POST", "/admin/tiers", json={"name": "gold", "settings": {"priority": 20,
                                                                                 "requests": "3/minute"}})
    assert created.status_code == 201 and created.json()["settings"]["priority"] == 20
    assert admin(a, "POST", "/admin/tiers", json={"name": "gold"}).status_code == 409
    assert admin(a, "POST", "/admin/tiers", json={"name": "pro"}).json()["error"]["code"] == "tier_exists"
    assert wait_until(lambda: tiers(b).get("gold", {}).get("origin") == "live", timeout_s=1.0)
    issued = admin(b, "POST", "/admin/keys", json={"id": "g", "tier": "gold"})
    assert issued.status_code == 201
    assert chat_headers(b, issued.json()["key"]).get("x-ratelimit-limit-requests") == "3"

    in_use = admin(a, "POST", "/admin/tiers/delete", json={"name": "gold"})
    assert in_use.status_code == 409 and in_use.json()["error"]["code"] == "tier_in_use"
    assert "'g'" in in_use.json()["error"]["message"] or " g" in in_use.json()["error"]["message"]
    in_file = admin(a, "POST", "/admin/tiers/delete", json={"name": "free"})
    assert in_file.status_code == 409 and in_file.json()["error"]["code"] == "tier_in_config"
    assert admin(a, "POST", "/admin/tiers/delete", json={"name": "nothing"}).status_code == 404

    admin(a, "POST", "/admin/keys/revoke", json={"id": "g"})
    assert admin(a, "POST", "/admin/tiers/delete", json={"name": "gold"}).json() == {"name": "gold", "deleted": True}
    assert wait_until(lambda: "gold" not in tiers(b), timeout_s=1.0)
    assert admin(b, "POST", "/admin/keys", json={"id": "h", "tier": "gold"}).status_code == 400


def test_a_live_change_holds_until_the_files_entry_for_that_tier_changes(gateways, caplog):
    a, b, path, redis_url = gateways
    patched = admin(a, "PATCH", "/admin/tiers", json={"name": "free", "settings": {"requests": "7/minute"}})
    assert patched.status_code == 200

    write(path, config(redis_url, pro_priority=11))  # another tier's entry changes: free's live change holds
    assert wait_until(lambda: tiers(a)["pro"]["settings"]["priority"] == 11, timeout_s=5.0), "not reloaded"
    assert tiers(a)["free"]["settings"]["requests"]["amount"] == 7 and tiers(a)["free"]["origin"] == "file+live"

    with caplog.at_level(logging.WARNING, logger="sluice"):
        write(path, config(redis_url, free_requests="9/minute", pro_priority=11))  # free's entry changes: file wins

        def file_wins() -> bool:
            row = tiers(a)["free"]
            return row["settings"]["requests"]["amount"] == 9 and row["origin"] == "file"

        assert wait_until(file_wins, timeout_s=5.0)
    assert any("tier free" in r.getMessage() and "file wins" in r.getMessage() for r in caplog.records)
    # the live change is dropped from the shared directory, not just ignored here
    assert wait_until(lambda: tiers(b)["free"]["origin"] == "file", timeout_s=1.0)
    write(path, config(redis_url, pro_priority=11))  # the file back as it was: the dropped change stays dropped
    assert wait_until(lambda: tiers(a)["free"]["settings"]["requests"]["amount"] == 50, timeout_s=5.0)
    assert tiers(a)["free"]["origin"] == "file"
