"""deploy/helm/sluice: every values combination renders (Helm's own engine, through helm-python-sdk), every
object passes the Kubernetes JSON schemas (kubernetes-validate, strict: unknown fields are errors) or, for the
prometheus-operator and KEDA kinds, the schema of their CRD models (cloudcoil-models-*, generated from the
upstream CRDs), the rendered sluice.yaml passes `sluice check-config`, and what each value is for shows in the
objects: workers, secrets referenced and never inlined, the headless engine Service and its DNS name in the
config, monitors selecting the right Service, the rules equal to deploy/prometheus, autoscalers on the Deployment."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import helm_python as helm
import jsonschema
import kubernetes_validate
import pytest
import yaml
from cloudcoil.models.keda.v1alpha1 import ScaledObject
from cloudcoil.models.prometheus_operator.v1 import PrometheusRule, ServiceMonitor
from pydantic import BaseModel

from sluice.cli import _parser as sluice_parser
from sluice.cli import main as sluice_main
from tests.deploy.test_prometheus_rules import exported_metrics

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy/helm/sluice"
RULES = ROOT / "deploy/prometheus/sluice-alerts.yml"
DASHBOARD = ROOT / "deploy/grafana/sluice-dashboard.json"
RELEASE, NAMESPACE = "demo", "llm"
FULLNAME = "demo-sluice"
KUBE_VERSION = "1.33.0"  # the oldest minor kubernetes-validate ships here; the chart needs >= 1.23 (autoscaling/v2)
CRD_MODELS: dict[tuple[str, str], type[BaseModel]] = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): ServiceMonitor,
    ("monitoring.coreos.com/v1", "PrometheusRule"): PrometheusRule,
    ("keda.sh/v1alpha1", "ScaledObject"): ScaledObject,
}
ADMIN_HASH = "sha256:" + hashlib.sha256(b"the-admin-key").hexdigest()
REDIS_PASSWORD = "s3cret-Redis-pass"  # a test value, looked for in the rendered objects
EXTERNAL_URL = "redis://:${SLUICE_REDIS_PASSWORD}@redis.example.internal:6379/0"
ENGINES = [{"model": "qwen3-8b", "dialect": "vllm", "selector": {"app.kubernetes.io/name": "vllm-qwen3-8b"},
            "port": 8000, "record": "A", "interval_s": 5}]

COMBINATIONS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "external-redis": {
        "redis": {"bundled": {"enabled": False}, "external": {"url": EXTERNAL_URL}},
        "secrets": {"existingSecret": "sluice-prod", "existingSecretHasRedisPassword": True,
                    "existingSecretHasAdminKeyHash": True},
    },
    "bundled-redis-with-secrets": {"secrets": {"adminKeyHash": ADMIN_HASH, "redisPassword": REDIS_PASSWORD}},
    "workers-2": {"server": {"workers": 2}},
    "dns-discovery": {"engines": ENGINES},
    "dns-discovery-srv": {"engines": [{**ENGINES[0], "record": "SRV"}]},
    "hpa": {"autoscaling": {"hpa": {"enabled": True, "maxReplicas": 6}}, "server": {"workers": 2}},
    "keda": {"autoscaling": {"keda": {"enabled": True, "maxReplicas": 8}}},
    "production": {  # the example of docs/deployment.md
        "server": {"workers": 2},
        "config": {"auth": {"mode": "api_key"},
                   "models": [{"name": "qwen3-8b", "engine": {"dialect": "vllm", "routing": "prefix_affinity"}}],
                   "tiers": {"pro": {"priority": 10, "requests": "60/minute", "tokens": "200000/minute",
                                     "concurrent": 16}},
                   "keys": [{"id": "alice", "hash": "sha256:" + hashlib.sha256(b"alice").hexdigest(),
                             "tenant": "acme", "tier": "pro"}]},
        "engines": [{"model": "qwen3-8b", "selector": {"app.kubernetes.io/name": "vllm-qwen3-8b"}, "port": 8000}],
        "secrets": {"existingSecret": "sluice-prod", "existingSecretHasAdminKeyHash": True,
                    "existingSecretHasRedisPassword": True},
        "monitoring": {"serviceMonitor": {"enabled": True}, "prometheusRule": {"enabled": True}},
    },
    "extras": {
        "extraVolumes": [{"name": "jwks", "secret": {"secretName": "idp-jwks"}}],
        "extraVolumeMounts": [{"name": "jwks", "mountPath": "/etc/sluice-jwks", "readOnly": True}],
        "extraEnv": [{"name": "SLUICE_TIER", "value": "pro"}],
    },
    "monitoring": {"monitoring": {"serviceMonitor": {"enabled": True, "labels": {"release": "kps"}},
                                  "prometheusRule": {"enabled": True}, "grafanaDashboard": {"enabled": True}},
                   "engines": ENGINES},
}


def render_texts(values: dict[str, Any]) -> dict[str, str]:
    with helm.Chart.load(CHART) as chart:
        return chart.render(values, name=RELEASE, namespace=NAMESPACE)


@cache
def _render_cached(name: str) -> tuple[dict[str, Any], ...]:
    return tuple(objects_of(render_texts(COMBINATIONS[name])))


def render(name: str) -> list[dict[str, Any]]:
    return list(_render_cached(name))


def objects_of(texts: dict[str, str]) -> Iterator[dict[str, Any]]:
    for template, text in sorted(texts.items()):
        if template.endswith(".txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                yield doc


def one(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, f"{len(found)} {kind} named {name}: {[o['metadata']['name'] for o in found]}"
    return found[0]


def kinds(objects: list[dict[str, Any]]) -> list[str]:
    return sorted(o["kind"] for o in objects)


def sluice_yaml(objects: list[dict[str, Any]]) -> dict[str, Any]:
    text = one(objects, "ConfigMap", f"{FULLNAME}-config")["data"]["sluice.yaml"]
    config = yaml.safe_load(text)
    assert isinstance(config, dict)
    return config


def container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    deployment = one(objects, "Deployment", FULLNAME)
    (gateway,) = deployment["spec"]["template"]["spec"]["containers"]
    assert isinstance(gateway, dict)
    return gateway


def env_from_secret(objects: list[dict[str, Any]]) -> dict[str, tuple[str, str]]:
    return {e["name"]: (e["valueFrom"]["secretKeyRef"]["name"], e["valueFrom"]["secretKeyRef"]["key"])
            for e in container(objects).get("env", []) if "valueFrom" in e}


def flag(args: list[str], name: str) -> str:
    assert name in args, f"{name} not in {args}"
    return args[args.index(name) + 1]


# --- schemas ------------------------------------------------------------------------------------------------------

def _closed(node: Any) -> Any:
    """The model's JSON schema with unknown fields refused, as kubernetes-validate's strict mode does, and Go's
    regular expressions in Python's syntax (a flag group such as ``(?i)`` must open the pattern)."""
    if isinstance(node, dict):
        node = {k: _closed(v) for k, v in node.items()}
        if "properties" in node and "additionalProperties" not in node:
            node["additionalProperties"] = False
        if isinstance(node.get("pattern"), str) and "(?i)" in node["pattern"]:
            node["pattern"] = "(?i)" + node["pattern"].replace("(?i)", "")
    elif isinstance(node, list):
        node = [_closed(v) for v in node]
    return node


@cache
def crd_schema(model: type[BaseModel]) -> dict[str, Any]:
    schema: dict[str, Any] = _closed(model.model_json_schema(by_alias=True))
    return schema


def validate(obj: dict[str, Any]) -> None:
    model = CRD_MODELS.get((obj["apiVersion"], obj["kind"]))
    if model is None:
        kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)
    else:
        jsonschema.validate(obj, crd_schema(model))
        model.model_validate(obj)


@pytest.mark.parametrize("name", sorted(COMBINATIONS))
def test_every_object_is_valid_against_its_schema(name: str) -> None:
    objects = render(name)
    assert {"ConfigMap", "Deployment", "Service"} <= set(kinds(objects))
    for obj in objects:
        validate(obj)
        assert obj["metadata"]["labels"]["app.kubernetes.io/instance"] == RELEASE


def test_the_validators_refuse_what_kubernetes_would() -> None:
    deployment = one(render("defaults"), "Deployment", FULLNAME)
    typo = yaml.safe_load(yaml.safe_dump(deployment))
    typo["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGett"] = {"path": "/ready"}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(typo, KUBE_VERSION, strict=True)
    monitor = one(render("monitoring"), "ServiceMonitor", FULLNAME)
    bad = yaml.safe_load(yaml.safe_dump(monitor))
    bad["spec"]["endpoint"] = bad["spec"].pop("endpoints")
    with pytest.raises(jsonschema.ValidationError):
        validate(bad)


@pytest.mark.parametrize("name", sorted(COMBINATIONS))
def test_helm_lint_finds_nothing(name: str) -> None:
    report = helm.lint(CHART, COMBINATIONS[name], strict=True, namespace=NAMESPACE)
    assert report["errors"] == []
    # severity 1 is INFO (e.g. "icon is recommended"); WARNING and ERROR are findings.
    assert [m for m in report["messages"] if m["severity"] > 1] == []


# --- the configuration ---------------------------------------------------------------------------------------------

def check_config(config: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                 capsys: pytest.CaptureFixture[str]) -> str:
    path = tmp_path / "sluice.yaml"
    path.write_text(yaml.safe_dump(config))
    monkeypatch.setenv("SLUICE_REDIS_PASSWORD", REDIS_PASSWORD)
    monkeypatch.setenv("SLUICE_ADMIN_KEY_HASH", ADMIN_HASH)
    logging.disable(logging.CRITICAL)  # main() configures logging; nothing here needs it
    try:
        status = sluice_main(["check-config", str(path)])
    finally:
        logging.disable(logging.NOTSET)
    out, err = capsys.readouterr()
    assert status == 0, err
    return out


@pytest.mark.parametrize("name", sorted(COMBINATIONS))
def test_rendered_config_passes_check_config(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    config = sluice_yaml(render(name))
    out = check_config(config, tmp_path, monkeypatch, capsys)
    assert ": ok:" in out
    assert config["server"]["host"] == "0.0.0.0"  # reachable from the Service, not only from inside the pod


def test_check_config_catches_a_bad_rendered_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """The check above can fail: a model without engine or sim, as a typo in values would give, is refused."""
    config = sluice_yaml(render("defaults"))
    config["models"][0]["simm"] = config["models"][0].pop("sim")
    with pytest.raises(AssertionError):
        check_config(config, tmp_path, monkeypatch, capsys)


def test_defaults_run_on_the_bundled_redis_with_persistence() -> None:
    objects = render("defaults")
    redis = one(objects, "StatefulSet", f"{FULLNAME}-redis")
    assert redis["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"] == "1Gi"
    args = redis["spec"]["template"]["spec"]["containers"][0]["args"]
    assert flag(args, "--appendonly") == "yes" and flag(args, "--dir") == "/data"
    mounts = redis["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
    assert {"name": "data", "mountPath": "/data"} in mounts
    service = one(objects, "Service", f"{FULLNAME}-redis")
    assert service["spec"]["clusterIP"] == "None" and redis["spec"]["serviceName"] == service["metadata"]["name"]
    assert sluice_yaml(objects)["state"] == f"redis://{FULLNAME}-redis:6379/0"
    assert sluice_yaml(objects)["quota"]["gateway_replicas"] == 2  # two pods of one worker share the store
    assert "Secret" not in kinds(objects)


def test_external_redis_and_an_existing_secret() -> None:
    objects = render("external-redis")
    assert "StatefulSet" not in kinds(objects) and "Secret" not in kinds(objects)
    config = sluice_yaml(objects)
    assert config["state"] == EXTERNAL_URL
    assert config["auth"]["admin_key_hash"] == "${SLUICE_ADMIN_KEY_HASH}"
    assert env_from_secret(objects) == {"SLUICE_REDIS_PASSWORD": ("sluice-prod", "redis-password"),
                                        "SLUICE_ADMIN_KEY_HASH": ("sluice-prod", "admin-key-hash")}


def test_secrets_are_referenced_never_inlined() -> None:
    objects = render("bundled-redis-with-secrets")
    secret = one(objects, "Secret", f"{FULLNAME}-secrets")
    assert base64.b64decode(secret["data"]["redis-password"]).decode() == REDIS_PASSWORD
    assert base64.b64decode(secret["data"]["admin-key-hash"]).decode() == ADMIN_HASH
    for obj in objects:
        if obj["kind"] != "Secret":
            text = yaml.safe_dump(obj)
            assert REDIS_PASSWORD not in text and ADMIN_HASH not in text, obj["kind"]
    config = sluice_yaml(objects)
    assert config["state"] == f"redis://:${{SLUICE_REDIS_PASSWORD}}@{FULLNAME}-redis:6379/0"
    assert config["auth"]["admin_key_hash"] == "${SLUICE_ADMIN_KEY_HASH}"
    assert env_from_secret(objects) == {"SLUICE_REDIS_PASSWORD": (f"{FULLNAME}-secrets", "redis-password"),
                                        "SLUICE_ADMIN_KEY_HASH": (f"{FULLNAME}-secrets", "admin-key-hash")}
    redis = one(objects, "StatefulSet", f"{FULLNAME}-redis")["spec"]["template"]["spec"]["containers"][0]
    assert flag(redis["args"], "--requirepass") == "$(REDIS_PASSWORD)"
    assert {e["name"] for e in redis["env"]} == {"REDIS_PASSWORD", "REDISCLI_AUTH"}


def test_a_changed_config_or_secret_rolls_the_pods() -> None:
    def checksums(values: dict[str, Any]) -> tuple[str, str]:
        annotations = one(list(objects_of(render_texts(values))), "Deployment")["spec"]["template"]["metadata"][
            "annotations"]
        return annotations["checksum/config"], annotations["checksum/secret"]

    base = checksums({})
    assert checksums({"config": {"auth": {"mode": "open"}, "models": [{"name": "other", "sim": {}}]}})[0] != base[0]
    assert checksums({"secrets": {"redisPassword": "another"}})[1] != base[1]
    assert checksums({}) == base


def test_workers_reach_the_gateway() -> None:
    objects = render("workers-2")
    args = container(objects)["args"]
    assert flag(args, "--workers") == "2"
    assert flag(args, "--config") == "/etc/sluice/sluice.yaml"
    assert flag(args, "--host") == "0.0.0.0"
    config = sluice_yaml(objects)
    assert config["server"]["workers"] == 2
    assert config["quota"]["gateway_replicas"] == 4  # 2 pods x 2 workers: each falls back to its share


@pytest.mark.parametrize("name", sorted(COMBINATIONS))
def test_the_container_command_is_one_sluice_accepts(name: str) -> None:
    args = container(render(name))["args"]
    parsed = sluice_parser().parse_args(args)
    assert parsed.run.__name__ == "_serve" and parsed.config == "/etc/sluice/sluice.yaml"
    assert parsed.workers == int(COMBINATIONS[name].get("server", {}).get("workers", 1))


def test_several_gateways_on_memory_state_are_refused() -> None:
    memory = {"redis": {"bundled": {"enabled": False}}}
    with pytest.raises(helm.HelmError, match="multiply every limit"):
        render_texts(memory)
    objects = list(objects_of(render_texts({**memory, "replicaCount": 1})))
    assert sluice_yaml(objects)["state"] == "memory://"
    with pytest.raises(helm.HelmError, match="choose one state store"):
        render_texts({"redis": {"external": {"url": EXTERNAL_URL}}})


@pytest.mark.parametrize(("values", "complaint"), [
    ({"replicaCont": 3}, "'replicaCont' not allowed"),
    ({"server": {"wokers": 2}}, "'wokers' not allowed"),
    ({"engines": [{"model": "m", "selector": {"app": "vllm"}, "record": "AAAA"}]}, "/engines/0/record"),
    ({"engines": [{"model": "m"}]}, "selector"),
    ({"secrets": {"adminKeyHash": "the-plain-admin-key"}}, "/secrets/adminKeyHash"),
    ({"redis": {"external": {"url": "10.0.0.9:6379"}}}, "/redis/external/url"),
])
def test_values_schema_refuses_typos_and_bad_values(values: dict[str, Any], complaint: str) -> None:
    with pytest.raises(helm.HelmValuesError, match=complaint):
        render_texts(values)


def test_gateway_probes_and_port() -> None:
    gateway = container(render("defaults"))
    assert gateway["livenessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert gateway["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "http"}
    assert gateway["ports"] == [{"name": "http", "containerPort": 8000, "protocol": "TCP"}]
    assert gateway["securityContext"]["readOnlyRootFilesystem"] is True
    # ... so /tmp is a volume of its own: several workers keep their metrics in a temporary directory there.
    volumes = {v["name"]: v for v in one(render("defaults"), "Deployment")["spec"]["template"]["spec"]["volumes"]}
    tmp = next(m for m in gateway["volumeMounts"] if m["mountPath"] == "/tmp")
    assert "emptyDir" in volumes[tmp["name"]] and not tmp.get("readOnly")
    service = one(render("defaults"), "Service", FULLNAME)
    assert service["spec"]["ports"][0]["targetPort"] == "http"


def test_disruptions_take_one_gateway_at_a_time() -> None:
    objects = render("defaults")
    budget = one(objects, "PodDisruptionBudget", FULLNAME)
    assert budget["spec"]["maxUnavailable"] == 1
    pods = one(objects, "Deployment", FULLNAME)["spec"]["template"]["metadata"]["labels"]
    assert budget["spec"]["selector"]["matchLabels"].items() <= pods.items()
    single = list(objects_of(render_texts({"replicaCount": 1})))  # a budget on one pod would block every drain
    assert "PodDisruptionBudget" not in kinds(single)


def test_extra_volumes_mounts_and_env_reach_the_gateway() -> None:
    objects = render("extras")
    gateway = container(objects)
    assert {"name": "SLUICE_TIER", "value": "pro"} in gateway["env"]
    assert {"name": "jwks", "mountPath": "/etc/sluice-jwks", "readOnly": True} in gateway["volumeMounts"]
    volumes = one(objects, "Deployment", FULLNAME)["spec"]["template"]["spec"]["volumes"]
    assert {"name": "jwks", "secret": {"secretName": "idp-jwks"}} in volumes


# --- engines found through DNS -------------------------------------------------------------------------------------

def test_dns_discovery_a_headless_service_and_its_name_in_the_config() -> None:
    objects = render("dns-discovery")
    service = one(objects, "Service", f"{FULLNAME}-engines-qwen3-8b")
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["selector"] == {"app.kubernetes.io/name": "vllm-qwen3-8b"}
    assert service["spec"]["ports"][0]["port"] == 8000
    (model,) = [m for m in sluice_yaml(objects)["models"] if m["name"] == "qwen3-8b"]
    assert model["engine"] == {
        "dialect": "vllm",
        "discovery": {"dns": f"{FULLNAME}-engines-qwen3-8b.{NAMESPACE}.svc.cluster.local", "record": "A",
                      "port": 8000, "interval_s": 5},
    }
    gateway_selector = one(objects, "Deployment", FULLNAME)["spec"]["selector"]["matchLabels"]
    assert not gateway_selector.items() <= service["metadata"]["labels"].items()  # not the gateway's pods


def test_dns_discovery_srv_names_the_port_record() -> None:
    (model,) = [m for m in sluice_yaml(render("dns-discovery-srv"))["models"] if m["name"] == "qwen3-8b"]
    assert model["engine"]["discovery"]["record"] == "SRV"
    assert "port" not in model["engine"]["discovery"]  # an SRV record carries the port
    srv_name = f"_http._tcp.{FULLNAME}-engines-qwen3-8b.{NAMESPACE}.svc.cluster.local"
    assert model["engine"]["discovery"]["dns"] == srv_name
    service = one(render("dns-discovery-srv"), "Service", f"{FULLNAME}-engines-qwen3-8b")
    assert service["spec"]["ports"][0]["name"] == "http"  # the _http._tcp SRV record exists only with this name


def test_a_model_name_becomes_a_valid_service_name() -> None:
    values = {"engines": [{**ENGINES[0], "model": "Qwen/Qwen3-8B.Instruct_v2"}]}
    objects = list(objects_of(render_texts(values)))
    service = one(objects, "Service", f"{FULLNAME}-engines-qwen-qwen3-8b-instruct-v2")
    assert service["metadata"]["labels"]["sluice.io/model"] == "qwen-qwen3-8b-instruct-v2"
    (model,) = [m for m in sluice_yaml(objects)["models"] if m["name"] == "Qwen/Qwen3-8B.Instruct_v2"]
    assert model["engine"]["discovery"]["dns"].startswith(service["metadata"]["name"] + ".")


def test_discovery_joins_a_model_already_in_the_config() -> None:
    values = {"engines": ENGINES,
              "config": {"auth": {"mode": "open"},
                         "models": [{"name": "qwen3-8b", "engine": {"dialect": "sglang", "routing": "least_kv"}}]}}
    (model,) = sluice_yaml(list(objects_of(render_texts(values))))["models"]
    assert model["engine"]["dialect"] == "sglang" and model["engine"]["routing"] == "least_kv"
    assert model["engine"]["discovery"]["dns"].startswith(f"{FULLNAME}-engines-qwen3-8b.")


# --- autoscaling -----------------------------------------------------------------------------------------------

def test_hpa_scales_the_deployment_on_cpu() -> None:
    objects = render("hpa")
    hpa = one(objects, "HorizontalPodAutoscaler", FULLNAME)
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": FULLNAME}
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    assert "replicas" not in one(objects, "Deployment", FULLNAME)["spec"]  # the HPA owns the count
    assert sluice_yaml(objects)["quota"]["gateway_replicas"] == 12  # at most 6 pods x 2 workers


def test_keda_scales_on_sluice_metrics() -> None:
    objects = render("keda")
    scaled = one(objects, "ScaledObject", FULLNAME)
    assert scaled["spec"]["scaleTargetRef"]["name"] == FULLNAME
    assert "replicas" not in one(objects, "Deployment", FULLNAME)["spec"]
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "prometheus"
    query = trigger["metadata"]["query"]
    assert query.startswith("sum(sluice_requests_in_flight{") and f'service="{FULLNAME}"' in query
    assert "sluice_requests_in_flight" in exported_metrics()
    assert "HorizontalPodAutoscaler" not in kinds(objects)
    assert sluice_yaml(objects)["quota"]["gateway_replicas"] == 8


def test_hpa_and_keda_together_are_refused() -> None:
    with pytest.raises(helm.HelmError, match="would fight"):
        render_texts({"autoscaling": {"hpa": {"enabled": True}, "keda": {"enabled": True}}})


@pytest.mark.parametrize("name", sorted(set(COMBINATIONS) - {"hpa", "keda", "monitoring", "production"}))
def test_autoscalers_and_monitors_are_off_by_default(name: str) -> None:
    assert not {"HorizontalPodAutoscaler", "ScaledObject", "ServiceMonitor", "PrometheusRule"} & set(
        kinds(render(name)))
    assert [o["metadata"]["name"] for o in render(name) if o["kind"] == "ConfigMap"] == [f"{FULLNAME}-config"]


# --- monitoring ------------------------------------------------------------------------------------------------

def test_service_monitor_selects_the_gateway_service_only() -> None:
    objects = render("monitoring")
    monitor = one(objects, "ServiceMonitor", FULLNAME)
    assert monitor["metadata"]["labels"]["release"] == "kps"
    selector = monitor["spec"]["selector"]["matchLabels"]
    selected = [s["metadata"]["name"] for s in objects
                if s["kind"] == "Service" and selector.items() <= s["metadata"]["labels"].items()]
    assert selected == [FULLNAME]
    service = one(objects, "Service", FULLNAME)
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]} and endpoint["path"] == "/metrics"
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}


def test_engine_monitor_gives_the_job_name_the_alerts_read() -> None:
    objects = render("monitoring")
    monitor = one(objects, "ServiceMonitor", f"{FULLNAME}-engines")
    selector = monitor["spec"]["selector"]["matchLabels"]
    selected = [s for s in objects if s["kind"] == "Service" and selector.items() <= s["metadata"]["labels"].items()]
    assert [s["metadata"]["name"] for s in selected] == [f"{FULLNAME}-engines-qwen3-8b"]
    assert selected[0]["metadata"]["labels"][monitor["spec"]["jobLabel"]] == "sluice-engines"
    assert 'up{job="sluice-engines"}' in RULES.read_text()  # SluiceEngineTargetDown


def test_prometheus_rule_equals_deploy_prometheus() -> None:
    rule = one(render("monitoring"), "PrometheusRule", FULLNAME)
    assert rule["spec"]["groups"] == yaml.safe_load(RULES.read_text())["groups"]
    chart_copy = CHART / "files/sluice-alerts.yml"
    assert chart_copy.read_bytes() == RULES.read_bytes()
    assert chart_copy.is_symlink() and chart_copy.resolve() == RULES.resolve()  # one file: it cannot drift


def test_the_packaged_chart_carries_the_rules_themselves(tmp_path: Path) -> None:
    """`helm package` follows the link: the archive holds the file, and renders the same PrometheusRule."""
    archive = Path(helm.package(CHART, destination=tmp_path))
    with helm.Chart.load_archive(archive.read_bytes()) as chart:
        packaged = {f["name"]: f for f in chart.files}
        texts = chart.render(COMBINATIONS["monitoring"], name=RELEASE, namespace=NAMESPACE)
    assert "files/sluice-alerts.yml" in packaged
    rule = one(list(objects_of(texts)), "PrometheusRule", FULLNAME)
    assert rule["spec"]["groups"] == yaml.safe_load(RULES.read_text())["groups"]


def test_grafana_dashboard_equals_deploy_grafana() -> None:
    dashboard = one(render("monitoring"), "ConfigMap", f"{FULLNAME}-dashboard")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(dashboard["data"]["sluice-dashboard.json"]) == json.loads(DASHBOARD.read_text())
    chart_copy = CHART / "files/sluice-dashboard.json"
    assert chart_copy.is_symlink() and chart_copy.resolve() == DASHBOARD.resolve()
