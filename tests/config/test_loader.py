from __future__ import annotations

import pytest
from pydantic import ValidationError

from sluice.config import Settings, load_settings
from sluice.errors import ConfigError

GOOD = """
server: {port: 9000}
models:
  - name: qwen
    engine: {dialect: sglang, urls: ["http://127.0.0.1:30000/"]}
tiers:
  pro: {priority: 10}
keys:
  - {id: alice, hash: "sha256:%s", tenant: acme, tier: pro}
""" % ("ab" * 32)


def write(tmp_path, text):
    path = tmp_path / "sluice.yaml"
    path.write_text(text)
    return path


def test_no_file_is_the_embedded_default():
    settings = load_settings(None)
    assert settings.auth.mode == "open"
    assert settings.models[0].sim is not None
    assert settings.state == "memory://"
    assert (settings.server.host, settings.server.port) == ("127.0.0.1", 8000)


def test_a_good_file_parses_into_frozen_settings(tmp_path):
    settings = load_settings(write(tmp_path, GOOD))
    assert settings.server.port == 9000
    assert settings.models[0].engine.urls == ["http://127.0.0.1:30000"]
    assert settings.keys[0].tier == "pro"
    with pytest.raises(ValidationError):
        settings.server.port = 1  # type: ignore[misc]


@pytest.mark.parametrize("text, expected", [
    ("models: [{name: a, engine: {urls: [http://x]}, colour: red}]", "models.0.colour: unknown setting"),
    ("models: [{name: a}]", "needs exactly one of 'engine' or 'sim'"),
    ("models: [{name: a, engine: {urls: [ftp://x]}}]", "models.0.engine.urls"),
    ("models: [{name: a, sim: {}}]\nkeys: [{id: k, hash: 'sha256:%s', tier: gold}]" % ("0" * 64), "tier 'gold'"),
    ("models: [{name: a, sim: {}}]", "no keys are configured"),
    ("auth: {mode: open}\nserver: {workers: 2}\nmodels: [{name: a, sim: {}}]", "needs shared state"),
    ("auth: {mode: open}\nmodels: [{name: a, sim: {}}, {name: a, sim: {}}]", "'a' appears twice"),
    ("- just a list", "expected a mapping"),
    ("models: [", "not valid YAML"),
])
def test_a_bad_file_names_the_file_and_the_field(tmp_path, text, expected):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert str(path) in str(info.value)
    assert expected in str(info.value)


def test_environment_references_are_expanded(tmp_path):
    text = "auth: {mode: open}\nmodels: [{name: a, engine: {urls: ['${ENGINE_URL}']}}]"
    settings = load_settings(write(tmp_path, text), environ={"ENGINE_URL": "http://127.0.0.1:1234"})
    assert settings.models[0].engine.urls == ["http://127.0.0.1:1234"]
    with pytest.raises(ConfigError, match="ENGINE_URL"):
        load_settings(write(tmp_path, text), environ={})


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(tmp_path / "nope.yaml")


def test_embedded_default_is_valid_on_its_own():
    assert Settings.embedded() == load_settings(None)


def test_the_shipped_example_has_the_three_tiers():
    from pathlib import Path

    settings = load_settings(Path(__file__).parents[2] / "examples" / "sluice.yaml")
    tiers = settings.tiers
    assert (tiers["free"].requests.amount, tiers["free"].requests.period_s) == (20, 60)
    assert (tiers["pro"].requests.amount, tiers["pro"].requests.period_s) == (60, 60)
    assert tiers["internal"].tokens and tiers["free"].tokens and tiers["pro"].tokens
    assert {k.tier for k in settings.keys} == {"free", "pro", "internal"}


LINED = """\
auth: {mode: open}
server:
  port: 8000
  wokers: 2
models:
  - name: a
    engine:
      dialect: vlm
      urls: [http://127.0.0.1:1]
  - sim: {max_num_seqs: many}
"""


def problems(tmp_path, text):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    return path, str(info.value).splitlines()


def test_each_problem_is_one_line_naming_file_line_field_and_what_is_wrong_in_plain_words(tmp_path):
    path, lines = problems(tmp_path, LINED)
    assert sorted(lines) == sorted([
        f"{path}:4: server.wokers: unknown setting (did you mean workers?)",
        f"{path}:8: models.0.engine.dialect: must be one of 'vllm', 'sglang' or 'lmdeploy' (got 'vlm')",
        f"{path}:10: models.1.name: required setting is missing",
        f"{path}:10: models.1.sim.max_num_seqs: must be a whole number (got 'many')",
    ])


@pytest.mark.parametrize("text, expected", [
    ("auth: {mode: open}\nmodels: [{name: a, sim: {speed: fast}}]", ":2: models.0.sim.speed: must be a number"),
    ("auth: {mode: open}\nmodels: [{name: a, sim: {}}]\nserver: {port: -1}", ":3: server.port: must be at least 0"),
    ("auth: {mode: open}\nmodels: [{name: a, sim: {}}]\nserver: {workers: 1.5}", "a whole number, not a fraction"),
    ("auth: {mode: open}\nmodels: [{name: a, sim: {}}]\nserve: {}",
     ":3: serve: unknown setting (did you mean server?)"),
    ("auth:\n  mode: opn\nmodels: [{name: a, sim: {}}]", ":2: auth.mode: must be one of 'api_key' or 'open'"),
    ("auth: {mode: open}\nmodels: {name: a}", ":2: models: must be a list"),
])
def test_common_mistakes_are_said_plainly(tmp_path, text, expected):
    _, lines = problems(tmp_path, text)
    assert any(expected in line for line in lines), lines
    assert not any(jargon in line for line in lines for jargon in ("Input should", "Extra inputs", "Field required"))


def test_a_yaml_syntax_error_names_the_file_and_line_not_a_unicode_string(tmp_path):
    path, lines = problems(tmp_path, "auth: {mode: open}\nmodels:\n  - name: a\n    sim: {speed: [1, 2}\n")
    assert len(lines) == 1 and lines[0].startswith(f"{path}:4: not valid YAML: "), lines
    assert "<unicode string>" not in lines[0]


def test_a_value_that_may_be_a_secret_is_not_echoed(tmp_path):
    raw_key = "sk-sluice-pasted-the-key-itself-0123"
    _, lines = problems(tmp_path, f"models: [{{name: a, sim: {{}}}}]\nkeys: [{{id: k, hash: {raw_key}}}]")
    assert any("keys.0.hash: does not have the expected form" in line for line in lines), lines
    assert raw_key not in "\n".join(lines)


def test_an_unset_environment_reference_names_its_line_and_field(tmp_path):
    path, lines = problems(tmp_path, "auth: {mode: open}\nmodels:\n  - name: a\n    engine: {urls: ['${NOPE_URL}']}")
    assert lines == [f"{path}:4: models.0.engine.urls.0: environment variable NOPE_URL is referenced but not set"]
