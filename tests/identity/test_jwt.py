"""JWT bearer tokens: valid ones map to principals; the classic attacks are refused with a 401 and a short reason."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from sluice.clock import FakeClock
from sluice.config import JwtSettings, KeySettings, Settings, TierSettings, parse_settings
from sluice.errors import AuthenticationError, ConfigError
from sluice.identity import (
    ANONYMOUS,
    Authenticator,
    JwtVerifier,
    KeyRing,
    generate_key,
    hash_key,
    load_jwks,
    looks_like_jwt,
)
from tests.conftest import serve_gateway, wait_until

ISSUER, AUDIENCE = "https://login.example.com/", "sluice"
SECRET = "s3cret-" + "x" * 40
TIERS = {"default": TierSettings(), "free": TierSettings(priority=0), "pro": TierSettings(priority=10)}
CLAIMS = {"sub": "alice", "org": "acme", "tier": "pro"}


@pytest.fixture(scope="module")
def rsa_key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key():
    return ec.generate_private_key(ec.SECP256R1())


def public_jwk(private_key, **extra):
    algorithm = jwt.algorithms.RSAAlgorithm if isinstance(private_key, rsa.RSAPrivateKey) else (
        jwt.algorithms.ECAlgorithm)
    return {**algorithm.to_jwk(private_key.public_key(), as_dict=True), **extra}


@pytest.fixture
def jwks_file(tmp_path, rsa_key, ec_key):
    path = tmp_path / "jwks.json"
    # The RSA key carries its alg; the EC key has none: P-256 pins it to ES256.
    path.write_text(json.dumps({"keys": [public_jwk(rsa_key, kid="rsa1", alg="RS256", use="sig"),
                                         public_jwk(ec_key, kid="ec1")]}))
    return path


def jwt_settings(jwks_file, **overrides) -> JwtSettings:
    return JwtSettings(**{
        "issuer": ISSUER, "audience": AUDIENCE, "jwks_file": str(jwks_file),
        "hs256_secrets": [{"kid": "hs1", "secret": SECRET}],
        "claims": {"user": "sub", "tenant": "org", "tier": "tier"}, "default_tier": "free", **overrides,
    })


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def verifier(jwks_file, clock):
    return JwtVerifier.from_settings(jwt_settings(jwks_file), TIERS, clock)


def claims(clock, **overrides):
    now = int(clock.wall())
    return {"iss": ISSUER, "aud": AUDIENCE, "iat": now, "nbf": now, "exp": now + 300, **CLAIMS, **overrides}


def b64(data: bytes | dict) -> str:
    raw = json.dumps(data).encode() if isinstance(data, dict) else data
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def refused(verifier, token, reason):
    with pytest.raises(AuthenticationError) as info:
        verifier.verify(token)
    assert info.value.status == 401 and info.value.code == "invalid_api_key"
    assert info.value.message == f"Invalid token: {reason}."
    assert token not in info.value.message


# --- valid tokens ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kid, algorithm", [("hs1", "HS256"), ("rsa1", "RS256"), ("ec1", "ES256")])
def test_valid_tokens_map_to_their_principal(verifier, clock, rsa_key, ec_key, kid, algorithm):
    key = {"hs1": SECRET, "rsa1": rsa_key, "ec1": ec_key}[kid]
    token = jwt.encode(claims(clock), key, algorithm=algorithm, headers={"kid": kid})
    principal = verifier.verify(token)
    assert (principal.key_id, principal.user, principal.tenant, principal.tier, principal.priority) == (
        "jwt:alice", "alice", "acme", "pro", 10)


def test_claims_left_out_take_the_defaults(verifier, clock):
    token = jwt.encode({k: v for k, v in claims(clock).items() if k not in ("org", "tier")}, SECRET,
                       algorithm="HS256", headers={"kid": "hs1"})
    principal = verifier.verify(token)
    assert (principal.tenant, principal.tier, principal.priority) == ("default", "free", 0)


def test_a_lone_key_needs_no_kid(tmp_path, rsa_key, clock):
    path = tmp_path / "one.json"
    path.write_text(json.dumps({"keys": [public_jwk(rsa_key)]}))  # no kid, no alg: RSA pins RS256
    verifier = JwtVerifier.from_settings(jwt_settings(path, hs256_secrets=[]), TIERS, clock)
    principal = verifier.verify(jwt.encode(claims(clock), rsa_key, algorithm="RS256"))
    assert principal.key_id == "jwt:alice"


def test_each_subject_is_its_own_caller_whichever_key_signed_it(verifier, clock, rsa_key):
    alice = verifier.verify(jwt.encode(claims(clock), SECRET, algorithm="HS256", headers={"kid": "hs1"}))
    alice_again = verifier.verify(jwt.encode(claims(clock), rsa_key, algorithm="RS256", headers={"kid": "rsa1"}))
    bob = verifier.verify(jwt.encode(claims(clock, sub="bob"), SECRET, algorithm="HS256", headers={"kid": "hs1"}))
    assert alice.key_id == alice_again.key_id == "jwt:alice"
    assert bob.key_id == "jwt:bob"


def test_a_configured_subject_claim_names_the_caller(jwks_file, clock):
    verifier = JwtVerifier.from_settings(
        jwt_settings(jwks_file, claims={"subject": "uid", "user": "email", "tenant": "org"}), TIERS, clock)
    token = jwt.encode(claims(clock, uid=4217, email="alice@acme.example"), SECRET, algorithm="HS256",
                       headers={"kid": "hs1"})
    principal = verifier.verify(token)
    assert (principal.key_id, principal.user, principal.tenant) == ("jwt:4217", "alice@acme.example", "acme")
    without = jwt.encode(claims(clock, email="alice@acme.example"), SECRET, algorithm="HS256", headers={"kid": "hs1"})
    refused(verifier, without, "missing claim 'uid' (the caller's identity)")


def test_the_leeway_forgives_small_clock_skew(verifier, clock):
    token = jwt.encode(claims(clock, exp=int(clock.wall()) - 20, nbf=int(clock.wall()) + 20), SECRET,
                       algorithm="HS256", headers={"kid": "hs1"})
    assert verifier.verify(token).user == "alice"


def test_time_is_the_injected_clocks(verifier, clock):
    token = jwt.encode(claims(clock), SECRET, algorithm="HS256", headers={"kid": "hs1"})
    assert verifier.verify(token).user == "alice"
    clock.advance(300 + 30)  # exp + leeway
    refused(verifier, token, "expired")


# --- attacks and mistakes -------------------------------------------------------------------------------------

def test_expired_beyond_the_leeway_is_refused(verifier, clock, rsa_key):
    token = jwt.encode(claims(clock, exp=int(clock.wall()) - 31), rsa_key, algorithm="RS256", headers={"kid": "rsa1"})
    refused(verifier, token, "expired")


def test_not_yet_valid_is_refused(verifier, clock, rsa_key):
    token = jwt.encode(claims(clock, nbf=int(clock.wall()) + 3600), rsa_key, algorithm="RS256",
                       headers={"kid": "rsa1"})
    refused(verifier, token, "not yet valid")


def test_issued_in_the_future_is_refused(verifier, clock):
    token = jwt.encode(claims(clock, iat=int(clock.wall()) + 3600), SECRET, algorithm="HS256", headers={"kid": "hs1"})
    refused(verifier, token, "issued in the future")


def test_wrong_audience_is_refused(verifier, clock, ec_key):
    token = jwt.encode(claims(clock, aud="another-service"), ec_key, algorithm="ES256", headers={"kid": "ec1"})
    refused(verifier, token, "wrong audience")


def test_wrong_issuer_is_refused(verifier, clock, ec_key):
    token = jwt.encode(claims(clock, iss="https://evil.example.com/"), ec_key, algorithm="ES256",
                       headers={"kid": "ec1"})
    refused(verifier, token, "wrong issuer")


@pytest.mark.parametrize("claim", ["exp", "aud", "iss", "sub"])
def test_a_required_claim_missing_is_refused(verifier, clock, claim):
    body = {k: v for k, v in claims(clock).items() if k != claim}
    reason = f"missing claim {claim!r}" + (" (the caller's identity)" if claim == "sub" else "")
    refused(verifier, jwt.encode(body, SECRET, algorithm="HS256", headers={"kid": "hs1"}), reason)


@pytest.mark.parametrize("kid", [None, "hs1", "rsa1"])
def test_alg_none_is_refused(verifier, clock, kid):
    header = {"alg": "none", "typ": "JWT", **({"kid": kid} if kid else {})}
    token = f"{b64(header)}.{b64(claims(clock))}."
    assert looks_like_jwt(token)
    refused(verifier, token, "no kid in the token header" if kid is None else "algorithm not allowed for this key")


def test_alg_none_is_refused_even_for_a_lone_key(tmp_path, rsa_key, clock):
    path = tmp_path / "one.json"
    path.write_text(json.dumps({"keys": [public_jwk(rsa_key)]}))
    verifier = JwtVerifier.from_settings(jwt_settings(path, hs256_secrets=[]), TIERS, clock)
    refused(verifier, f"{b64({'alg': 'none'})}.{b64(claims(clock))}.", "algorithm not allowed for this key")


def test_hs256_signed_with_the_rsa_public_key_is_refused(verifier, clock, rsa_key):
    """The classic confusion: a verifier that trusts the header's alg would HMAC with the public key's PEM."""
    pem = rsa_key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    signing_input = f"{b64({'alg': 'HS256', 'typ': 'JWT', 'kid': 'rsa1'})}.{b64(claims(clock, tier='pro'))}"
    signature = b64(hmac.new(pem, signing_input.encode(), hashlib.sha256).digest())
    refused(verifier, f"{signing_input}.{signature}", "algorithm not allowed for this key")


def test_a_token_naming_another_keys_algorithm_is_refused(verifier, clock, rsa_key):
    token = jwt.encode(claims(clock), rsa_key, algorithm="RS256", headers={"kid": "hs1"})
    refused(verifier, token, "algorithm not allowed for this key")


@pytest.mark.parametrize("kid, algorithm", [("hs1", "HS256"), ("rsa1", "RS256"), ("ec1", "ES256")])
def test_a_tampered_payload_is_refused(verifier, clock, rsa_key, ec_key, kid, algorithm):
    key = {"hs1": SECRET, "rsa1": rsa_key, "ec1": ec_key}[kid]
    header, _, signature = jwt.encode(claims(clock, tier="free"), key, algorithm=algorithm,
                                      headers={"kid": kid}).split(".")
    refused(verifier, f"{header}.{b64(claims(clock, tier='pro'))}.{signature}", "bad signature")


def test_a_token_signed_by_another_key_is_refused(verifier, clock):
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    refused(verifier, jwt.encode(claims(clock), other, algorithm="RS256", headers={"kid": "rsa1"}), "bad signature")


def test_an_unknown_kid_is_refused(verifier, clock):
    token = jwt.encode(claims(clock), SECRET, algorithm="HS256", headers={"kid": "rotated-away"})
    refused(verifier, token, "unknown key")


def test_a_tier_that_does_not_exist_is_refused(verifier, clock):
    token = jwt.encode(claims(clock, tier="platinum"), SECRET, algorithm="HS256", headers={"kid": "hs1"})
    refused(verifier, token, "the token's tier is not configured")


@pytest.mark.parametrize("overrides, reason", [
    ({"exp": "tomorrow"}, "claim 'exp' is not a number"), ({"exp": True}, "claim 'exp' is not a number"),
    ({"sub": ["a", "b"]}, "invalid token"), ({"org": {"id": 1}}, "claim 'org' is not a string"),
])
def test_malformed_claims_are_refused(verifier, clock, overrides, reason):
    refused(verifier, jwt.encode(claims(clock, **overrides), SECRET, algorithm="HS256", headers={"kid": "hs1"}), reason)


def test_garbage_is_refused_as_malformed(verifier):
    refused(verifier, "eyJub3QganNvbg.eyJ9.c2ln", "malformed token")


# --- the JWKS file --------------------------------------------------------------------------------------------

def test_jwks_keys_are_pinned_by_alg_or_key_type(jwks_file):
    assert [(k.kid, k.algorithm) for k in load_jwks(jwks_file)] == [("rsa1", "RS256"), ("ec1", "ES256")]


@pytest.mark.parametrize("jwk, message", [
    ({"kty": "oct", "k": "c2VjcmV0", "kid": "x"}, "symmetric keys belong"),
    ({"kty": "RSA", "alg": "HS256", "n": "AQAB", "e": "AQAB"}, "is not one of"),
    ({"kty": "RSA", "alg": "none", "n": "AQAB", "e": "AQAB"}, "is not one of"),
    ({"kty": "RSA", "alg": "ES256", "n": "AQAB", "e": "AQAB"}, "needs a EC key"),
])
def test_bad_jwks_entries_stop_startup(tmp_path, jwk, message):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"keys": [jwk]}))
    with pytest.raises(ConfigError, match=message):
        load_jwks(path)


def test_private_keys_are_refused_and_encryption_keys_skipped(tmp_path, rsa_key):
    private = jwt.algorithms.RSAAlgorithm.to_jwk(rsa_key, as_dict=True)
    path = tmp_path / "k.json"
    path.write_text(json.dumps({"keys": [private]}))
    with pytest.raises(ConfigError, match="private key"):
        load_jwks(path)
    path.write_text(json.dumps({"keys": [public_jwk(rsa_key, use="enc"), public_jwk(rsa_key, kid="s")]}))
    assert [k.kid for k in load_jwks(path)] == ["s"]


def test_a_missing_jwks_file_is_a_config_error(tmp_path, clock):
    with pytest.raises(ConfigError, match="cannot read"):
        JwtVerifier.from_settings(jwt_settings(tmp_path / "absent.json"), TIERS, clock)


def test_kids_must_be_unique_across_secrets_and_jwks(jwks_file, clock):
    with pytest.raises(ConfigError, match="share a kid"):
        JwtVerifier.from_settings(jwt_settings(jwks_file, hs256_secrets=[{"kid": "rsa1", "secret": SECRET}]),
                                  TIERS, clock)


# --- configuration and the authenticator ----------------------------------------------------------------------

def test_jwt_alone_satisfies_api_key_mode_and_short_secrets_are_refused(jwks_file):
    base = {"models": [{"name": "m", "sim": {}}], "tiers": {"free": {}}}
    jwt_conf = {"issuer": ISSUER, "audience": AUDIENCE, "jwks_file": str(jwks_file), "default_tier": "free"}
    assert parse_settings({**base, "auth": {"jwt": jwt_conf}}).auth.jwt.leeway_s == 30
    with pytest.raises(ConfigError, match="default_tier"):
        parse_settings({**base, "auth": {"jwt": {**jwt_conf, "default_tier": "gold"}}})
    with pytest.raises(ConfigError, match="secret"):
        parse_settings({**base, "auth": {"jwt": {**jwt_conf, "hs256_secrets": [{"kid": "a", "secret": "short"}]}}})
    with pytest.raises(ConfigError, match="needs keys"):
        parse_settings({**base, "auth": {"jwt": {**jwt_conf, "jwks_file": None}}})


def test_the_authenticator_sends_jwts_to_the_verifier_and_keys_to_the_keyring(verifier, clock):
    key = generate_key()
    ring = KeyRing([KeySettings(id="k1", hash=hash_key(key), tier="pro")], TIERS)
    auth = Authenticator(ring, verifier)
    assert auth.authenticate(f"Bearer {key}").key_id == "k1"
    token = jwt.encode(claims(clock), SECRET, algorithm="HS256", headers={"kid": "hs1"})
    assert auth.authenticate(f"Bearer {token}").key_id == "jwt:alice"
    with pytest.raises(AuthenticationError, match="expired"):
        auth.authenticate("Bearer " + jwt.encode(claims(clock, exp=0), SECRET, algorithm="HS256",
                                                 headers={"kid": "hs1"}))
    assert not looks_like_jwt(key)
    with pytest.raises(AuthenticationError, match="Incorrect API key"):
        Authenticator(ring).authenticate(f"Bearer {token}")  # no jwt configured: just an unknown key


def test_under_open_access_a_bad_token_is_anonymous_and_a_good_one_is_recognised(verifier, clock):
    auth = Authenticator(KeyRing([], TIERS, open_access=True), verifier)
    assert auth.authenticate("Bearer " + jwt.encode(claims(clock, exp=0), SECRET, algorithm="HS256",
                                                    headers={"kid": "hs1"})) is ANONYMOUS
    good = jwt.encode(claims(clock), SECRET, algorithm="HS256", headers={"kid": "hs1"})
    assert auth.authenticate(f"Bearer {good}").user == "alice"


# --- through a live gateway -----------------------------------------------------------------------------------

def test_a_live_gateway_takes_jwts_and_refuses_bad_ones_without_logging_them(tmp_path, jwks_file, rsa_key):
    log_path = tmp_path / "access.jsonl"
    settings: Settings = parse_settings({
        "server": {"access_log_path": str(log_path)},
        "models": [{"name": "m", "sim": {"speed": 50}}],
        "tiers": {"free": {}, "pro": {"priority": 10}},
        "auth": {"jwt": {"issuer": ISSUER, "audience": AUDIENCE, "jwks_file": str(jwks_file),
                         "claims": {"tenant": "org", "tier": "tier"}, "default_tier": "free"}},
    })
    now = int(time.time())  # the live gateway runs on the real clock
    good = jwt.encode({"iss": ISSUER, "aud": AUDIENCE, "exp": now + 300, **CLAIMS}, rsa_key, algorithm="RS256",
                      headers={"kid": "rsa1"})
    expired = jwt.encode({"iss": ISSUER, "aud": AUDIENCE, "exp": now - 3600, **CLAIMS}, rsa_key, algorithm="RS256",
                         headers={"kid": "rsa1"})
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    with serve_gateway(settings) as live:
        ok = httpx.post(live.url + "/v1/chat/completions", json=body,
                        headers={"authorization": f"Bearer {good}", "x-request-id": "jwt-ok"})
        bad = httpx.post(live.url + "/v1/chat/completions", json=body,
                         headers={"authorization": f"Bearer {expired}", "x-request-id": "jwt-bad"})
        assert ok.status_code == 200, ok.text
        assert bad.status_code == 401
        assert bad.json() == {"error": {"message": "Invalid token: expired.", "type": "invalid_request_error",
                                        "param": None, "code": "invalid_api_key"}}

        def logged() -> dict[str, dict]:
            lines = [json.loads(line) for line in log_path.read_text().splitlines()] if log_path.exists() else []
            return {entry["request_id"]: entry for entry in lines}

        assert wait_until(lambda: {"jwt-ok", "jwt-bad"} <= logged().keys())
    entry = logged()["jwt-ok"]
    assert (entry["key_id"], entry["user"], entry["tenant"], entry["tier"]) == ("jwt:alice", "alice", "acme", "pro")
    assert logged()["jwt-bad"]["status"] == 401
    text = log_path.read_text()
    for token in (good, expired):
        assert token not in text and token.split(".")[2] not in text



def test_per_key_limits_count_per_subject_through_a_live_gateway(jwks_file, rsa_key, ec_key):
    settings: Settings = parse_settings({
        "models": [{"name": "m", "sim": {"speed": 50}}],
        "tiers": {"pro": {"priority": 10, "requests": "2/hour"}},
        "auth": {"jwt": {"issuer": ISSUER, "audience": AUDIENCE, "jwks_file": str(jwks_file),
                         "claims": {"tier": "tier"}, "default_tier": "pro"}},
    })
    now = int(time.time())  # the live gateway runs on the real clock

    def token(sub: str, key, algorithm: str, kid: str) -> str:
        return jwt.encode({"iss": ISSUER, "aud": AUDIENCE, "exp": now + 300, "sub": sub, "tier": "pro"}, key,
                          algorithm=algorithm, headers={"kid": kid})

    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    with serve_gateway(settings) as live:
        def call(bearer: str) -> httpx.Response:
            return httpx.post(live.url + "/v1/chat/completions", json=body,
                              headers={"authorization": f"Bearer {bearer}"})

        alice_rsa, alice_ec = token("alice", rsa_key, "RS256", "rsa1"), token("alice", ec_key, "ES256", "ec1")
        assert [call(alice_rsa).status_code, call(alice_ec).status_code] == [200, 200]
        exhausted = call(alice_rsa)  # alice's two requests an hour are spent, whichever key signed her tokens
        assert exhausted.status_code == 429 and exhausted.headers["x-sluice-reason"] == "quota_requests"
        bob = call(token("bob", rsa_key, "RS256", "rsa1"))  # another subject signed by the same key: its own bucket
        assert bob.status_code == 200, bob.text
        assert bob.headers["x-ratelimit-remaining-requests"] == "1"
        anonymous = call(jwt.encode({"iss": ISSUER, "aud": AUDIENCE, "exp": now + 300, "tier": "pro"}, rsa_key,
                                    algorithm="RS256", headers={"kid": "rsa1"}))
        assert anonymous.status_code == 401
        assert anonymous.json()["error"]["message"] == "Invalid token: missing claim 'sub' (the caller's identity)."
        assert anonymous.json()["error"]["code"] == "invalid_api_key"
