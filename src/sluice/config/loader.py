"""Reads the configuration: the YAML file and the environment. The only module that does."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from sluice.config.schema import Settings
from sluice.errors import ConfigError

CONFIG_ENV = "SLUICE_CONFIG"
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def config_path_from_env(environ: Mapping[str, str] | None = None) -> str | None:
    return (environ if environ is not None else os.environ).get(CONFIG_ENV) or None


def load_settings(path: str | Path | None, environ: Mapping[str, str] | None = None) -> Settings:
    """Parse ``path`` (or the embedded default when ``None``) into ``Settings``.

    ``${NAME}`` in any string is replaced by the environment variable NAME (an error if unset), so secrets
    can stay out of the file. Errors name the file and the field.
    """
    if path is None:
        return Settings.embedded()
    env = environ if environ is not None else os.environ
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return parse_settings(_expand_env(raw, env, path), source=str(path))


def parse_settings(data: dict[str, Any], *, source: str = "<config>") -> Settings:
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{source}: " + "; ".join(_describe(e) for e in exc.errors(include_url=False))) from exc


def _describe(err: Any) -> str:
    where = ".".join(str(p) for p in err["loc"])
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        msg = "unknown field"
    return f"{where}: {msg}" if where else msg


def _expand_env(node: Any, env: Mapping[str, str], path: Path) -> Any:
    if isinstance(node, str):
        def sub(m: re.Match[str]) -> str:
            if m.group(1) not in env:
                raise ConfigError(f"{path}: environment variable {m.group(1)} is referenced but not set")
            return env[m.group(1)]

        return _ENV_REF.sub(sub, node)
    if isinstance(node, list):
        return [_expand_env(x, env, path) for x in node]
    if isinstance(node, dict):
        return {k: _expand_env(v, env, path) for k, v in node.items()}
    return node
