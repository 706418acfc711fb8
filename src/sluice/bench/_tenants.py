"""Tenants of a load test: each with its own API key, share of the arrivals and length mix.

``--tenants`` takes a file (JSON or YAML: a list of objects with the fields below) or an inline spec, tenants
separated by ``;``, fields by ``,``, the first field the name:

    acme,key=sk-1,weight=3,output=sharegpt;beta,key_env=BETA_KEY,input=512

Fields: ``key`` (sent as ``Authorization: Bearer``), ``key_env`` (the key read from that environment variable),
``weight`` (relative share of the arrivals, default 1), ``input`` and ``output`` (length specs, see
``sluice.bench._dists``; default: the run's ``--input-len`` / ``--output-len``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sluice.bench._dists import LengthDist, parse_dist

_FIELDS = {"name", "key", "key_env", "weight", "input", "output"}


@dataclass(frozen=True)
class Tenant:
    name: str
    input_len: LengthDist
    output_len: LengthDist
    api_key: str | None = None
    weight: float = 1.0


def parse_tenants(spec: str | None, *, input_len: LengthDist, output_len: LengthDist, api_key: str | None,
                  env: Mapping[str, str]) -> tuple[Tenant, ...]:
    """The tenants of a run; without a spec, one tenant named ``default`` with the run's key and lengths."""
    if not spec:
        return (Tenant("default", input_len, output_len, api_key),)
    entries = _load_file(Path(spec)) if _is_file(spec) else _parse_inline(spec)
    tenants = tuple(_tenant(e, input_len=input_len, output_len=output_len, api_key=api_key, env=env) for e in entries)
    if not tenants:
        raise ValueError("--tenants names no tenant")
    names = [t.name for t in tenants]
    if len(set(names)) != len(names):
        raise ValueError(f"tenant names repeat: {names}")
    return tenants


def _is_file(spec: str) -> bool:
    return spec.endswith((".json", ".yaml", ".yml")) and Path(spec).is_file()


def _load_file(path: Path) -> list[dict[str, Any]]:
    text = path.read_text()
    if path.suffix == ".json":
        data = json.loads(text)
    else:
        import yaml

        data = yaml.safe_load(text)
    if isinstance(data, dict) and "tenants" in data:
        data = data["tenants"]
    if not isinstance(data, list) or not all(isinstance(e, dict) for e in data):
        raise ValueError(f"{path}: expected a list of tenants (objects)")
    return data


def _parse_inline(spec: str) -> list[dict[str, Any]]:
    entries = []
    for part in filter(None, (p.strip() for p in spec.split(";"))):
        name, *fields = (f.strip() for f in part.split(","))
        entry: dict[str, Any] = {"name": name}
        for f in fields:
            key, sep, value = f.partition("=")
            if not sep:
                raise ValueError(f"tenant {name!r}: field {f!r} is not key=value")
            entry[key.strip()] = value.strip()
        entries.append(entry)
    return entries


def _tenant(entry: dict[str, Any], *, input_len: LengthDist, output_len: LengthDist, api_key: str | None,
            env: Mapping[str, str]) -> Tenant:
    unknown = set(entry) - _FIELDS
    name = str(entry.get("name") or "")
    if unknown or not name:
        raise ValueError(f"tenant {name or '?'}: needs a name; unknown fields {sorted(unknown)}")
    key = entry.get("key")
    if "key_env" in entry:
        if entry["key_env"] not in env:
            raise ValueError(f"tenant {name}: environment variable {entry['key_env']} is not set")
        key = env[entry["key_env"]]
    weight = float(entry.get("weight", 1.0))
    if not weight > 0:
        raise ValueError(f"tenant {name}: weight must be > 0")
    return Tenant(
        name=name,
        input_len=parse_dist(str(entry["input"]), "input") if "input" in entry else input_len,
        output_len=parse_dist(str(entry["output"]), "output") if "output" in entry else output_len,
        api_key=str(key) if key is not None else api_key,
        weight=weight,
    )
