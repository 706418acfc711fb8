"""deploy/: the Prometheus rules pass promtool's checks and unit tests, and neither the rules nor the Grafana
dashboard name a metric or label the gateway does not export (the names come from GatewayMetrics' registry,
so a renamed metric breaks this test instead of silently emptying a panel or an alert)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from sluice.telemetry import GatewayMetrics

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy/prometheus/sluice-alerts.yml"
RULE_TESTS = ROOT / "deploy/prometheus/sluice-alerts.test.yml"
DASHBOARD = ROOT / "deploy/grafana/sluice-dashboard.json"

# Written by Prometheus itself, not by the gateway.
PROMETHEUS_METRICS = {"up": frozenset()}
TARGET_LABELS = frozenset({"job", "instance"})
SAMPLE_SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("", "_count", "_sum", "_created"),
    "info": ("_info",),
    "stateset": ("",),
    "enum": ("",),
    "gaugehistogram": ("_bucket", "_gcount", "_gsum"),
    "unknown": ("",),
}
PROMQL_KEYWORDS = frozenset(
    {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "group_left", "group_right",
     "inf", "nan", "atan2"}
)


def exported_metrics() -> dict[str, frozenset[str]]:
    """Every sample name GatewayMetrics exposes, with the label names it may carry."""
    metrics = GatewayMetrics()
    label_names = {
        w._name: tuple(w._labelnames)  # noqa: SLF001 - prometheus_client keeps label names private
        for w in vars(metrics).values() if isinstance(w, MetricWrapperBase)
    }
    exported: dict[str, frozenset[str]] = {}
    for family in metrics.registry.collect():
        # a collector's own families (read at scrape time) carry their label names themselves
        own = getattr(family, "_labelnames", ())  # noqa: SLF001 - as above
        labels = frozenset(label_names.get(family.name, own)) | TARGET_LABELS
        for suffix in SAMPLE_SUFFIXES[family.type]:
            exported[family.name + suffix] = labels | {"le"} if suffix == "_bucket" else labels
    return exported


def selectors(expr: str) -> Iterator[tuple[str, frozenset[str]]]:
    """(metric name, label names matched on it) for every vector selector of a PromQL expression."""
    expr = re.sub(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`', '""', expr)  # strings (and $vars in them)
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # range and subquery durations, [$__rate_interval]
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)  # label lists
    for m in re.finditer(r"(?<![\w:.$])([A-Za-z_:][\w:]*)\s*(\{[^}]*\})?(\s*\()?", expr):
        name, matchers, call = m.groups()
        if call or name.lower() in PROMQL_KEYWORDS:
            continue
        yield name, frozenset(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", matchers or ""))


def recorded_names() -> set[str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return {rule["record"] for group in groups for rule in group["rules"] if "record" in rule}


def unknown_names(expr: str, exported: dict[str, frozenset[str]], recorded: set[str]) -> list[str]:
    """What in ``expr`` is neither a metric the gateway exports (with labels it has) nor a recording rule."""
    problems = []
    known = {**exported, **PROMETHEUS_METRICS}
    for name, labels in selectors(expr):
        if name in recorded:
            continue
        if name not in known:
            problems.append(f"metric {name!r} is not exported")
        elif name in exported and not labels <= exported[name]:
            problems.append(f"{name} has no label(s) {sorted(labels - exported[name])}")
    return problems


def dashboard_queries() -> Iterator[tuple[str, str]]:
    """(where, PromQL) for every panel target, rows' nested panels included."""
    dashboard = json.loads(DASHBOARD.read_text())

    def walk(panels: list[dict]) -> Iterator[dict]:
        for panel in panels:
            yield panel
            yield from walk(panel.get("panels", []))

    for panel in walk(dashboard["panels"]):
        for target in panel.get("targets", []):
            yield f"panel {panel['title']!r} target {target['refId']}", target["expr"]


def template_queries() -> Iterator[tuple[str, str, str | None]]:
    """(variable, selector, label) of every label_values() variable."""
    for var in json.loads(DASHBOARD.read_text())["templating"]["list"]:
        if var["type"] != "query":
            continue
        query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
        m = re.fullmatch(r"label_values\((?:(.+),\s*)?(\w+)\)", query.strip())
        assert m, f"variable {var['name']}: unsupported query {query!r}"
        yield var["name"], m[1], m[2]


def rule_expressions() -> Iterator[tuple[str, str]]:
    for group in yaml.safe_load(RULES.read_text())["groups"]:
        for rule in group["rules"]:
            yield rule.get("alert") or rule["record"], rule["expr"]


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        message = "promtool not found: install it with `apt-get install -y prometheus` (Debian's package ships it)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=120, cwd=ROOT)


def test_rules_pass_promtool_check(promtool: str) -> None:
    result = run(promtool, "check", "rules", str(RULES.relative_to(ROOT)))
    assert result.returncode == 0, result.stdout + result.stderr


def test_rules_pass_their_unit_tests(promtool: str) -> None:
    result = run(promtool, "test", "rules", str(RULE_TESTS.relative_to(ROOT)))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_dashboard_queries_are_valid_promql(promtool: str, tmp_path: Path) -> None:
    """Each panel query, with Grafana's variables filled in, parses as PromQL (promtool check rules)."""
    rules = []
    for i, (_, expr) in enumerate(dashboard_queries()):
        expr = expr.replace("$__rate_interval", "1m").replace("$__interval", "1m")
        expr = re.sub(r"\$\{?\w+\}?", ".*", expr)
        rules.append({"record": f"dashboard:query_{i}", "expr": expr})
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = run(promtool, "check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


def test_dashboard_uses_only_exported_metrics() -> None:
    exported, recorded = exported_metrics(), recorded_names()
    problems, used = [], set()
    for where, expr in dashboard_queries():
        names = {name for name, _ in selectors(expr)}
        assert names, f"{where}: no metric in {expr!r}"
        used |= names
        problems += [f"{where}: {p}" for p in unknown_names(expr, exported, recorded)]
    for var, selector, label in template_queries():
        if selector:
            names = {name for name, _ in selectors(selector)}
            problems += [f"variable {var}: {p}" for p in unknown_names(selector, exported, recorded)]
            problems += [f"variable {var}: {n} has no label {label!r}" for n in names
                         if n in exported and label not in exported[n]]
    assert not problems, "\n".join(problems)
    assert any(name.startswith("sluice_") for name in used)


def test_rules_use_only_exported_metrics() -> None:
    exported, recorded = exported_metrics(), recorded_names()
    problems = []
    for rule, expr in rule_expressions():
        problems += [f"rule {rule}: {p}" for p in unknown_names(expr, exported, recorded)]
    assert not problems, "\n".join(problems)


def test_rule_unit_tests_feed_exported_series() -> None:
    """The unit tests' input series are series the gateway (or Prometheus) really writes: an alert tested on a
    made-up metric or label would pass here and never fire in production."""
    exported = exported_metrics()
    problems = []
    for case in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for series in case["input_series"]:
            problems += [f"test {case['name']!r}: {p}"
                         for p in unknown_names(series["series"], exported, set())]
    assert not problems, "\n".join(problems)


def test_alerts_carry_severity_and_annotations() -> None:
    alerts = [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]
              if "alert" in rule]
    names = {rule["alert"] for rule in alerts}
    assert {"SluiceHighRejectionRatio", "SluiceEngineSaturated", "SluiceReplicaDown",
            "SluiceQuotaStoreDegraded"} <= names
    for rule in alerts:
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, rule["alert"]
        assert rule["annotations"].get("summary") and rule["annotations"].get("description"), rule["alert"]
    tested = {t["alertname"] for case in yaml.safe_load(RULE_TESTS.read_text())["tests"]
              for t in case.get("alert_rule_test", [])}
    assert names <= tested, f"alerts without a unit test: {sorted(names - tested)}"


def test_dashboard_shape() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["schemaVersion"] >= 36
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
            assert panel["targets"], panel["title"]


def test_the_name_check_catches_drift() -> None:
    """The checker itself: a renamed metric, a label the metric lacks and an unknown recording rule are caught;
    functions, keywords, label lists, strings and Grafana variables are not mistaken for metrics."""
    exported = exported_metrics()
    ok = ('histogram_quantile(0.99, sum by (le, model) (rate(sluice_request_duration_seconds_bucket'
          '{job=~"$job", model=~"$model"}[$__rate_interval]))) > 1e3 and on (job) up offset 5m')
    assert unknown_names(ok, exported, set()) == []
    assert unknown_names("rate(sluice_request_total[5m])", exported, set()) == [
        "metric 'sluice_request_total' is not exported"]
    assert unknown_names('sum(rate(sluice_rejections_total{tenant="x"}[5m]))', exported, set()) == [
        "sluice_rejections_total has no label(s) ['tenant']"]
    assert unknown_names("sluice:nope:rate5m > 0", exported, {"sluice:rejection_ratio:rate5m"}) == [
        "metric 'sluice:nope:rate5m' is not exported"]
