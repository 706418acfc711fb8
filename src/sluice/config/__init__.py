"""Configuration: typed, frozen, parsed once."""

from sluice.config._console import ConsoleSettings
from sluice.config._gpu import GpuSettings
from sluice.config._limits import LimitRule, Rate, ShadowTier
from sluice.config.loader import CONFIG_ENV, config_path_from_env, load_settings, parse_settings
from sluice.config.schema import (
    DEFAULT_MODEL,
    AdmissionSettings,
    AuthSettings,
    AutoscaleSettings,
    Dialect,
    EngineSettings,
    HmacSecretSettings,
    JwtClaimSettings,
    JwtSettings,
    KeySettings,
    KubernetesScaleSettings,
    ModelSettings,
    QuotaSettings,
    ScaleOutSettings,
    ServerSettings,
    Settings,
    SimSettings,
    TierSettings,
)

__all__ = [
    "CONFIG_ENV",
    "DEFAULT_MODEL",
    "AdmissionSettings",
    "AuthSettings",
    "AutoscaleSettings",
    "ConsoleSettings",
    "Dialect",
    "EngineSettings",
    "GpuSettings",
    "HmacSecretSettings",
    "JwtClaimSettings",
    "JwtSettings",
    "KeySettings",
    "KubernetesScaleSettings",
    "LimitRule",
    "ModelSettings",
    "QuotaSettings",
    "Rate",
    "ScaleOutSettings",
    "ServerSettings",
    "Settings",
    "ShadowTier",
    "SimSettings",
    "TierSettings",
    "config_path_from_env",
    "load_settings",
    "parse_settings",
]
