"""Reads the configuration: the YAML file and the environment. The only module that does.

An error names ``FILE:LINE: field.path: what is wrong`` in plain words: the file is composed once more into YAML
nodes to learn each setting's line, and pydantic's errors are translated (``config/_messages.py``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from sluice.config._messages import describe
from sluice.config.schema import Settings
from sluice.errors import ConfigError

CONFIG_ENV = "SLUICE_CONFIG"
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")

Loc = tuple[str | int, ...]


def config_path_from_env(environ: Mapping[str, str] | None = None) -> str | None:
    return (environ if environ is not None else os.environ).get(CONFIG_ENV) or None


def load_settings(path: str | Path | None, environ: Mapping[str, str] | None = None) -> Settings:
    """Parse ``path`` (or the embedded default when ``None``) into ``Settings``.

    ``${NAME}`` in any string is replaced by the environment variable NAME (an error if unset), so secrets
    can stay out of the file. Errors name the file, the line and the field.
    """
    if path is None:
        return Settings.embedded()
    env = environ if environ is not None else os.environ
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not a text file (UTF-8): {exc.reason}") from exc
    try:
        raw = yaml.safe_load(text)
        lines = setting_lines(yaml.compose(text, Loader=yaml.SafeLoader))
    except yaml.YAMLError as exc:
        raise ConfigError(_yaml_error(path, exc)) from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}:1: expected a mapping of settings (key: value) at the top level, found "
                          f"{'nothing' if raw is None else 'a ' + type(raw).__name__}")
    return parse_settings(_expand_env(raw, env, path, (), lines), source=str(path), lines=lines)


def parse_settings(data: dict[str, Any], *, source: str = "<config>", lines: Mapping[Loc, int] | None = None,
                   ) -> Settings:
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError("\n".join(_located(source, lines or {}, err) for err in exc.errors(include_url=False))
                          ) from exc


def setting_lines(node: yaml.Node | None, loc: Loc = ()) -> dict[Loc, int]:
    """The 1-based line of every setting in a composed YAML document, by its path (``("models", 0, "name")``)."""
    lines: dict[Loc, int] = {loc: node.start_mark.line + 1} if node is not None else {}
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode):
                lines.update(setting_lines(value, (*loc, key.value)))
                lines[(*loc, key.value)] = key.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            lines.update(setting_lines(item, (*loc, index)))
    return lines


def _located(source: str, lines: Mapping[Loc, int], err: Any) -> str:
    loc = tuple(err["loc"])
    line = next((lines[loc[:n]] for n in range(len(loc), -1, -1) if loc[:n] in lines), None)
    where = f"{source}:{line}" if line is not None else source
    return f"{where}: {describe(err)}"


def _yaml_error(path: Path, exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    context = getattr(exc, "context", None)
    where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
    return f"{where}: not valid YAML: {problem}" + (f" ({context})" if context else "")


def _expand_env(node: Any, env: Mapping[str, str], path: Path, loc: Loc, lines: Mapping[Loc, int]) -> Any:
    if isinstance(node, str):
        def sub(m: re.Match[str]) -> str:
            if m.group(1) not in env:
                line = f":{lines[loc]}" if loc in lines else ""
                raise ConfigError(f"{path}{line}: {'.'.join(map(str, loc))}: environment variable {m.group(1)} "
                                  "is referenced but not set")
            return env[m.group(1)]

        return _ENV_REF.sub(sub, node)
    if isinstance(node, list):
        return [_expand_env(x, env, path, (*loc, i), lines) for i, x in enumerate(node)]
    if isinstance(node, dict):
        return {k: _expand_env(v, env, path, (*loc, k), lines) for k, v in node.items()}
    return node
