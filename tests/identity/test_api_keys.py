from __future__ import annotations

import pytest

from sluice.config import KeySettings, TierSettings
from sluice.errors import AuthenticationError
from sluice.identity import ANONYMOUS, KeyRing, generate_key, hash_key, presented_key

KEY = generate_key()
RING_ARGS = ([KeySettings(id="k1", hash=hash_key(KEY), user="u", tenant="t", tier="pro")],
             {"pro": TierSettings(priority=10), "default": TierSettings()})


def test_keys_are_random_and_prefixed():
    assert KEY.startswith("sk-sluice-") and generate_key() != KEY
    assert hash_key(KEY).startswith("sha256:") and KEY not in hash_key(KEY)


@pytest.mark.parametrize("authorization, api_key, expected", [
    ("Bearer abc", None, "abc"), ("bearer  abc ", None, "abc"), (None, "abc", "abc"),
    ("Basic abc", None, None), ("Bearer ", None, None), (None, None, None),
])
def test_presented_key(authorization, api_key, expected):
    assert presented_key(authorization, api_key) == expected


def test_a_known_key_maps_to_its_principal_with_the_tiers_priority():
    principal = KeyRing(*RING_ARGS).authenticate(f"Bearer {KEY}")
    assert (principal.key_id, principal.user, principal.tenant, principal.tier, principal.priority) == (
        "k1", "u", "t", "pro", 10)


def test_unknown_and_missing_keys_are_refused_without_echoing_the_key():
    ring = KeyRing(*RING_ARGS)
    with pytest.raises(AuthenticationError) as info:
        ring.authenticate("Bearer sk-sluice-guessed-key-123456")
    assert "sk-sluice-guessed-key-123456" not in info.value.message
    with pytest.raises(AuthenticationError):
        ring.authenticate(None)


def test_open_access_lets_anyone_in_but_still_recognises_keys():
    ring = KeyRing(*RING_ARGS, open_access=True)
    assert ring.authenticate(None) is ANONYMOUS
    assert ring.authenticate("Bearer wrong") is ANONYMOUS
    assert ring.authenticate(f"Bearer {KEY}").key_id == "k1"
