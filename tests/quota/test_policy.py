"""Which buckets a request touches: scopes, models, and how refusals name them."""

from __future__ import annotations

from sluice.config import QuotaSettings, TierSettings
from sluice.identity import Principal
from sluice.quota import Price, QuotaPolicy

PRICE = Price(prompt_tokens=10, max_output_tokens=90)


def policy() -> QuotaPolicy:
    tiers = {
        "pro": TierSettings.model_validate({
            "requests": "60/minute", "tokens": "1000/minute", "concurrent": 2,
            "limits": [
                {"per": "user", "tokens": "5000/minute"},
                {"per": "tenant", "input_tokens": "100/minute", "output_tokens": "900/minute"},
                {"per": "tier", "requests": "1000/minute"},
                {"per": "key", "model": "each", "requests": "10/minute"},
                {"per": "key", "model": "big", "requests": "1/minute"},
            ],
        }),
        "free": TierSettings.model_validate({"requests": "20/minute"}),
    }
    quota = QuotaSettings.model_validate({"limits": [{"per": "global", "model": "small", "concurrent": 100},
                                                     {"per": "global", "requests": "100000/minute"}]})
    return QuotaPolicy(tiers, quota)


def alice(key="k1", user="alice") -> Principal:
    return Principal(key_id=key, user=user, tenant="acme", tier="pro", priority=10)


def test_a_pro_request_touches_every_scope_once():
    plan = policy().plan(alice(), "small", PRICE)
    described = {(b.info.scope, b.info.kind, b.cost) for b in plan.buckets}
    assert described == {
        ("tier pro", "requests", 1), ("tier pro", "tokens", 100),
        ("tier pro, user alice", "tokens", 100),
        ("tier pro, tenant acme", "input_tokens", 10), ("tier pro, tenant acme", "output_tokens", 90),
        ("tier pro (shared)", "requests", 1),
        ("tier pro for model small", "requests", 1),
        ("all callers", "requests", 1),
    }
    leases = [(lease.scope, lease.limit) for lease in plan.leases]
    assert leases == [("tier pro", 2), ("all callers for model small", 100)]


def test_model_rules_apply_to_their_model_only():
    scopes = {b.info.scope for b in policy().plan(alice(), "big", PRICE).buckets}
    assert "tier pro for model big" in scopes
    assert not any(lease.scope.endswith("model small") for lease in policy().plan(alice(), "big", PRICE).leases)


def test_keys_of_one_user_share_user_buckets_but_not_key_buckets():
    p = policy()
    a, b = p.plan(alice("k1"), "small", PRICE), p.plan(alice("k2"), "small", PRICE)
    user_keys = lambda plan: {x.key for x in plan.buckets if "user" in x.info.scope}  # noqa: E731
    key_keys = lambda plan: {x.key for x in plan.buckets if x.info.scope == "tier pro"}  # noqa: E731
    assert user_keys(a) == user_keys(b)
    assert not key_keys(a) & key_keys(b)


def test_every_key_carries_one_hash_tag_and_tiers_do_not_share_buckets():
    p = policy()
    pro = p.plan(alice(), "small", PRICE)
    free = p.plan(Principal("k9", "bob", "acme", "free"), "small", PRICE)
    assert all(x.key.startswith("{sluice}:") for x in (*pro.buckets, *pro.leases))
    assert {b.info.scope for b in free.buckets} == {"tier free", "all callers"}
    assert not {b.key for b in free.buckets if b.info.scope == "tier free"} & {b.key for b in pro.buckets}


def test_tightening_scales_tier_rates_but_not_global_ones():
    normal = {b.info.scope + b.info.kind: b for b in policy().plan(alice(), "small", PRICE).buckets}
    tight = {b.info.scope + b.info.kind: b for b in policy().plan(alice(), "small", PRICE, tighten=0.5).buckets}
    assert tight["tier prorequests"].info.amount == 30 and tight["tier prorequests"].capacity == 30
    assert tight["tier prorequests"].interval_s == 2 * normal["tier prorequests"].interval_s
    assert tight["tier prorequests"].key == normal["tier prorequests"].key  # same bucket, same state
    assert tight["all callersrequests"] == normal["all callersrequests"]
