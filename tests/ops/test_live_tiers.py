"""The file-or-live rule on its own (the HTTP side: test_admin_tiers.py): a record written before the rule existed
(the plain settings an earlier PUT stored) stays in force after an upgrade, and a superseded record is dropped from
the directory, not only ignored."""

from __future__ import annotations

import asyncio
import logging

from sluice.clock import FakeClock
from sluice.config import parse_settings
from sluice.gateway._live import LiveConfig
from sluice.identity import Directory, MemoryDirectory

MODELS = [{"name": "m", "sim": {}}]


def settings(free_requests: str):
    return parse_settings({"models": MODELS, "auth": {"mode": "open"},
                           "tiers": {"free": {"requests": free_requests, "tokens": "1000/hour"}}})


async def test_a_record_from_before_the_rule_is_kept_after_an_upgrade():
    directory = Directory(MemoryDirectory(), FakeClock())
    await directory.start()
    await directory.put_tier("free", {"requests": "7/minute"})  # what the old PUT stored: the settings alone
    live = LiveConfig(settings("50/hour"), directory, FakeClock())
    tier = live.effective_tiers()["free"]
    assert tier.requests is not None and tier.requests.amount == 7
    assert tier.tokens is None  # it was a PUT: a whole replacement
    assert live.describe_tiers()[0]["origin"] == "file+live"


async def test_a_superseded_record_is_dropped_from_the_directory_and_said_once(caplog):
    directory = Directory(MemoryDirectory(), FakeClock())
    await directory.start()
    live = LiveConfig(settings("50/hour"), directory, FakeClock())
    await live.change_tier("free", {"requests": "7/minute"}, replace=False)
    tier = live.effective_tiers()["free"]
    assert tier.requests.amount == 7 and tier.tokens.amount == 1000  # PATCH: the file's tokens stay

    with caplog.at_level(logging.WARNING, logger="sluice"):
        live.apply(settings("9/minute"))
        live.apply()  # applied again before the drop lands: said once
        for _ in range(100):  # the drop runs as a task of its own: let it run
            if not directory.snapshot.tiers:
                break
            await asyncio.sleep(0)
    assert directory.snapshot.tiers == {}  # dropped from the shared directory
    assert live.effective_tiers()["free"].requests.amount == 9
    said = [r.getMessage() for r in caplog.records if "file wins" in r.getMessage()]
    assert len(said) == 1 and said[0].startswith("tier free:")
