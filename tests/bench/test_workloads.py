"""Length specs, presets shaped like chat traces, tenants, and the seeded request plan."""

from __future__ import annotations

import random
import statistics
from itertools import islice
from pathlib import Path

import pytest

from sluice.bench import PRESETS, Fixed, LogNormal, Tenant, Uniform, parse_dist, parse_tenants, plan


def test_parse_dist() -> None:
    assert parse_dist("128", "input") == Fixed(128)
    assert parse_dist("32-256", "output") == Uniform(32, 256)
    assert parse_dist("uniform:1-2", "output") == Uniform(1, 2)
    assert parse_dist("lognormal:100:0.5", "input") == LogNormal(100.0, 0.5)
    assert parse_dist("lognormal:100:0.5:300", "input") == LogNormal(100.0, 0.5, 300)
    assert parse_dist("ShareGPT", "input") == PRESETS["sharegpt"].input
    assert parse_dist("sharegpt", "output") == PRESETS["sharegpt"].output
    for bad in ("0", "-3", "9-2", "lognormal:1", "lognormal:-1:1", "zipf", ""):
        with pytest.raises(ValueError):
            parse_dist(bad, "input")


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_have_their_documented_means(name: str) -> None:
    rng = random.Random(0)
    for dist in (PRESETS[name].input, PRESETS[name].output):
        samples = [dist.sample(rng) for _ in range(40_000)]
        assert statistics.fmean(samples) == pytest.approx(dist.mean, rel=0.05)
        assert min(samples) >= 1 and max(samples) <= dist.max_tokens
        assert statistics.median(samples) < dist.mean  # right-skewed, like chat traces


def test_tenants_inline_file_and_env(tmp_path: Path) -> None:
    default_in, default_out = Fixed(10), Fixed(20)
    kw = {"input_len": default_in, "output_len": default_out, "api_key": "sk-default"}
    (only,) = parse_tenants(None, env={}, **kw)
    assert only == Tenant("default", default_in, default_out, "sk-default")
    a, b = parse_tenants("acme,key=sk-1,weight=3,output=sharegpt; beta,key_env=BETA,input=5-9", env={"BETA": "sk-2"},
                         **kw)
    assert (a.name, a.api_key, a.weight, a.input_len, a.output_len) == (
        "acme", "sk-1", 3.0, default_in, PRESETS["sharegpt"].output)
    assert (b.name, b.api_key, b.weight, b.input_len, b.output_len) == ("beta", "sk-2", 1.0, Uniform(5, 9), default_out)
    spec = tmp_path / "tenants.yaml"
    spec.write_text("tenants:\n  - {name: x, key: k, weight: 2}\n  - {name: y}\n")
    x, y = parse_tenants(str(spec), env={}, **kw)
    assert (x.api_key, x.weight, y.api_key) == ("k", 2.0, "sk-default")
    for bad in ("a,weight=0", "a,colour=red", "a;a", "a,key_env=MISSING", "a,novalue"):
        with pytest.raises(ValueError):
            parse_tenants(bad, env={}, **kw)


def test_plan_is_reproducible_and_follows_weights() -> None:
    tenants = (Tenant("a", Uniform(1, 50), Fixed(5), weight=3.0), Tenant("b", Fixed(7), Uniform(1, 9)))
    first = list(islice(plan(tenants, random.Random("0:plan")), 2000))
    again = list(islice(plan(tenants, random.Random("0:plan")), 2000))
    assert first == again
    assert first != list(islice(plan(tenants, random.Random("1:plan")), 2000))
    share_a = sum(r.tenant.name == "a" for r in first) / len(first)
    assert share_a == pytest.approx(0.75, abs=0.03)
    for r in first[:50]:
        assert len(r.prompt.split()) == r.input_len
        assert r.input_len == 7 if r.tenant.name == "b" else 1 <= r.input_len <= 50
