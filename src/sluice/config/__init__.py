"""Configuration: typed, frozen, parsed once."""

from sluice.config.loader import CONFIG_ENV, config_path_from_env, load_settings, parse_settings
from sluice.config.schema import (
    AdmissionSettings,
    DEFAULT_MODEL,
    AuthSettings,
    Dialect,
    EngineSettings,
    KeySettings,
    LimitRule,
    ModelSettings,
    QuotaSettings,
    Rate,
    ServerSettings,
    Settings,
    SimSettings,
    TierSettings,
)

__all__ = [
    "AdmissionSettings",
    "CONFIG_ENV",
    "DEFAULT_MODEL",
    "AuthSettings",
    "Dialect",
    "EngineSettings",
    "KeySettings",
    "LimitRule",
    "ModelSettings",
    "QuotaSettings",
    "Rate",
    "ServerSettings",
    "Settings",
    "SimSettings",
    "TierSettings",
    "config_path_from_env",
    "load_settings",
    "parse_settings",
]
