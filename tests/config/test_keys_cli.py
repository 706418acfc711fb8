"""`sluice keys create` offline: the admin key gets the auth line, an API key needs a tier, and every config line
is YAML that reads back as exactly the values given (the admin API's side: tests/ops/test_admin_api.py)."""

from __future__ import annotations

import pytest
import yaml

from sluice.cli import main
from sluice.config import parse_settings
from sluice.identity import hash_key

MODELS = [{"name": "m", "sim": {}}]


def created(capsys, *argv: str) -> tuple[str, dict]:
    assert main(["keys", "create", *argv]) == 0
    out = capsys.readouterr().out.splitlines()
    key = out[0].rsplit(": ", 1)[1]
    return key, yaml.safe_load("\n".join(out[2:]))


@pytest.mark.parametrize("key_id", ["a:b", "#x", "yes", "null", "1e3", "it's", 'say "hi"', "- dash", "x, y"])
def test_the_config_line_reads_back_as_the_values_given(capsys, key_id):
    key, doc = created(capsys, "--id", key_id, "--tier", "pro", "--user", "on", "--tenant", "no")
    [entry] = doc
    assert entry == {"id": key_id, "hash": hash_key(key), "user": "on", "tenant": "no", "tier": "pro"}
    settings = parse_settings({"models": MODELS, "tiers": {"pro": {}}, "keys": doc})  # and the gateway accepts it
    assert settings.keys[0].id == key_id


def test_id_admin_without_a_tier_makes_the_admin_key(capsys):
    key, doc = created(capsys, "--id", "admin")
    assert doc == {"auth": {"admin_key_hash": hash_key(key)}}
    key, doc = created(capsys, "--admin")
    assert doc == {"auth": {"admin_key_hash": hash_key(key)}}
    settings = parse_settings({"models": MODELS, "auth": {"mode": "open", **doc["auth"]}})
    assert settings.auth.admin_key_hash == hash_key(key)
    _, doc = created(capsys, "--id", "admin", "--tier", "default")  # an API key named admin, when asked for
    assert doc[0]["id"] == "admin" and doc[0]["tier"] == "default"


def test_an_api_key_needs_a_tier(capsys):
    assert main(["keys", "create", "--id", "bob"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""  # no key printed with a tier nobody chose
    assert captured.err.startswith("sluice: keys create needs --id and --tier")


def test_an_unreachable_gateway_is_one_line(capsys):
    from tests.redis_server import free_port

    url = f"http://127.0.0.1:{free_port()}"
    assert main(["keys", "list", "--url", url, "--admin-key", "k"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"sluice: cannot reach {url}") and err.count("\n") == 1
