"""Tiers changed through the admin API, and the rule that decides between them and the configuration file.

A live change is stored in the shared directory as a record: the fields it set, whether it replaced the whole tier
(``PUT``) or changed only those fields (``PATCH``), and a fingerprint of the tier's entry in the file when it was
made (``base``; None for a tier created through the API). The rule:

- a live change wins for as long as the tier's entry in the file stays what it was when the change was made;
- once that entry changes (edited, added for a tier created live, or removed), the file wins: the live change is
  dropped from the directory, with a warning in the log naming the tier.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Literal

import orjson
from pydantic import ValidationError

from sluice.config import TierSettings
from sluice.errors import InvalidRequestError

Source = Literal["file", "live", "default"]


# Tier settings added after live records began to store fingerprints: left out while at their default, so that a
# file entry that does not use them keeps the fingerprint an earlier version stored (and its live change holds).
_ADDED_LATER: dict[str, Any] = {"shadow": None, "ttft_slo_s": None, "over_budget": "refuse",
                                "over_budget_min_tokens": 16}
_RULE_ADDED_LATER: dict[str, Any] = {"mode": "enforce"}


def fingerprint(tier: TierSettings | None) -> str | None:
    """What a tier's entry in the file is (None: the file has no such tier)."""
    if tier is None:
        return None
    dumped = _without(tier.model_dump(mode="json"), _ADDED_LATER)
    dumped["limits"] = [_without(rule, _RULE_ADDED_LATER) for rule in dumped.get("limits", [])]
    doc = orjson.dumps(dumped, option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(doc).hexdigest()[:16]


def _without(doc: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    return {name: v for name, v in doc.items() if name not in defaults or v != defaults[name]}


def validated(settings: dict[str, Any]) -> TierSettings:
    """Tier settings given to the admin API, checked (a bad one is a 400 naming the field)."""
    try:
        return TierSettings.model_validate(settings)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in err["loc"])
        raise InvalidRequestError(f"Invalid tier setting {where}: {err['msg']}", param=f"settings.{where}") from exc


@dataclass(frozen=True, slots=True)
class LiveTier:
    settings: dict[str, Any]  # the fields set through the admin API
    replace: bool  # True: the file's entry is not used at all (PUT, or a tier created live)
    base: str | None  # the file entry's fingerprint when the change was made (None: not in the file)
    any_base: bool = False  # a record written before the rule existed: it matches whatever the file says

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> LiveTier:
        if "settings" not in doc or "replace" not in doc:  # the plain settings an earlier PUT stored
            return cls(dict(doc), replace=True, base=None, any_base=True)
        return cls(dict(doc["settings"]), bool(doc["replace"]), doc.get("base"))

    def to_doc(self) -> dict[str, Any]:
        return {"settings": self.settings, "replace": self.replace, "base": self.base}

    def applies_to(self, file_tier: TierSettings | None) -> bool:
        """The rule: in force while the file's entry is what it was when the change was made."""
        return (self.any_base and file_tier is not None) or self.base == fingerprint(file_tier)

    def merged(self, file_tier: TierSettings | None) -> TierSettings:
        live = validated(self.settings)
        if self.replace or file_tier is None:
            return live
        return file_tier.model_copy(update={name: getattr(live, name) for name in self.settings})

    def sources(self, file_tier: TierSettings | None) -> dict[str, Source]:
        from_file = set() if self.replace or file_tier is None else file_tier.model_fields_set
        return {name: "live" if name in self.settings else "file" if name in from_file else "default"
                for name in TierSettings.model_fields}

    def changed(self, settings: dict[str, Any], *, replace: bool) -> LiveTier:
        """This record after another change: PUT replaces it, PATCH merges field by field."""
        if replace:
            return LiveTier(dict(settings), True, self.base, self.any_base)
        return LiveTier({**self.settings, **settings}, self.replace, self.base, self.any_base)


def file_sources(file_tier: TierSettings) -> dict[str, Source]:
    return {name: "file" if name in file_tier.model_fields_set else "default" for name in TierSettings.model_fields}
