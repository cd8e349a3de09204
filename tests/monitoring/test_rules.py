"""Prometheus rules, configs and the Grafana dashboard: valid, tested, and using real metric names.

promtool comes from PATH, from .tools/prometheus, or is fetched by monitoring/install_promtool.sh;
these tests never skip.
"""

from __future__ import annotations

import functools
import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from monitoring import metrics

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "monitoring"
RULE_FILES = sorted((MONITORING / "rules").glob("*.yml"))
TEST_FILES = sorted((MONITORING / "tests").glob("*.yml"))
DASHBOARDS = sorted((MONITORING / "grafana" / "dashboards").glob("*.json"))
LOCAL_PROMTOOL = ROOT / ".tools" / "prometheus" / "usr" / "bin" / "promtool"
# Series Prometheus writes itself, not the server.
PROMETHEUS_SERIES = {"up"}


def find_promtool() -> str:
    """promtool from PATH or .tools/, else installed there by monitoring/install_promtool.sh."""
    found = shutil.which("promtool")
    if found:
        return found
    if LOCAL_PROMTOOL.is_file():
        return str(LOCAL_PROMTOOL)
    install = subprocess.run(
        ["bash", str(MONITORING / "install_promtool.sh")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if install.returncode != 0:
        pytest.fail(f"monitoring/install_promtool.sh could not install promtool:\n{install.stderr}")
    return install.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def promtool() -> str:
    return find_promtool()


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=120)


@functools.cache
def load(path: Path) -> dict:
    """A parsed YAML file, parsed once per session (the tests only read it)."""
    return yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def rules(kind: str) -> list[dict]:
    """Every rule of the given kind ("alert" or "record") in monitoring/rules/."""
    return [r for f in RULE_FILES for g in load(f)["groups"] for r in g["rules"] if kind in r]


def rule_tests() -> Iterator[dict]:
    for path in TEST_FILES:
        yield from load(path)["tests"]


# --- promtool -------------------------------------------------------------------------------


def test_rule_files_are_valid(promtool: str) -> None:
    result = run(promtool, "check", "rules", *map(str, RULE_FILES))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("config", ["prometheus.yml", "prometheus.local.yml"])
def test_prometheus_config_is_valid(promtool: str, config: str) -> None:
    result = run(promtool, "check", "config", str(MONITORING / config))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 2 rule files found" in result.stdout + result.stderr


def test_install_script_is_valid_bash() -> None:
    result = run("bash", "-n", str(MONITORING / "install_promtool.sh"))
    assert result.returncode == 0, result.stderr


def test_promtool_unit_tests_pass(promtool: str) -> None:
    # one promtool per file, in parallel: the files take a second or two each
    processes = {
        path.name: subprocess.Popen(
            [promtool, "test", "rules", str(path)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for path in TEST_FILES
    }
    failed = {}
    for name, process in processes.items():
        output, _ = process.communicate(timeout=120)
        if process.returncode != 0:
            failed[name] = output
    assert not failed, "\n".join(f"{name}:\n{output}" for name, output in failed.items())


# --- coverage of the rules by the promtool tests ---------------------------------------------


def test_every_alert_is_shown_silent_and_firing() -> None:
    checks = [c for t in rule_tests() for c in t.get("alert_rule_test", [])]
    for rule in rules("alert"):
        name = rule["alert"]
        mine = [c for c in checks if c["alertname"] == name]
        assert any(c.get("exp_alerts") for c in mine), f"no promtool test shows {name} firing"
        assert any(not c.get("exp_alerts") for c in mine), f"no promtool test shows {name} silent"
        for check in mine:
            for alert in check.get("exp_alerts") or []:
                assert alert.get("exp_labels", {}).get("severity"), f"{name}: test the labels"
                assert alert.get("exp_annotations"), f"{name}: test the annotations"


def test_every_recording_rule_has_its_values_checked() -> None:
    checks = [
        c for t in rule_tests() for c in t.get("promql_expr_test", []) if c.get("exp_samples")
    ]
    for rule in rules("record"):
        name = rule["record"]
        pattern = re.compile(rf"(?<![\w:]){re.escape(name)}(?![\w:])")
        assert any(pattern.search(c["expr"]) for c in checks), f"no promql_expr_test checks {name}"


def test_alerts_tell_a_person_what_to_do() -> None:
    for rule in rules("alert"):
        assert rule.get("labels", {}).get("severity") in {"critical", "warning"}, rule["alert"]
        annotations = rule.get("annotations", {})
        for key in ("summary", "description", "runbook"):
            assert len(annotations.get(key, "")) > 20, f"{rule['alert']}: write a real {key}"


def test_latency_alert_uses_the_slo_of_the_metrics_module() -> None:
    (latency,) = [r for r in rules("alert") if r["alert"] == "ModelLatencyHigh"]
    assert f"> {metrics.LATENCY_SLO_SECONDS}" in latency["expr"]


# --- metric names: every query uses a name monitoring/metrics.py exports -------------------------

_NOT_NAMES = {
    "by", "without", "on", "ignoring", "group_left", "group_right",
    "and", "or", "unless", "bool", "offset", "inf", "nan",
}  # fmt: skip


def metric_names(expr: str) -> set[str]:
    """The series names a PromQL expression selects (good enough for the rules we write)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', " ", expr)  # label values
    expr = re.sub(r"\{[^}]*\}", " ", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", " ", expr)  # ranges
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    expr = re.sub(r"\$\w+", " ", expr)  # Grafana variables
    names = set()
    for match in re.finditer(r"(?<![\w.])([A-Za-z_:][\w:]*)(\s*\()?", expr):
        name, is_call = match.groups()
        if not is_call and name.lower() not in _NOT_NAMES:
            names.add(name)
    return names


def test_metric_name_extraction() -> None:
    expr = (
        'sum by (job) (rate(http_requests_total{status="5xx"}[5m])) / ignoring (bin) group_left ()'
        " clamp_min(model:psi1h, 1e-4) > 2 * 86400 and on (job) up == 1"
    )
    assert metric_names(expr) == {"http_requests_total", "model:psi1h", "up"}


def dashboard_exprs() -> Iterator[tuple[str, str]]:
    for path in DASHBOARDS:
        for panel in panels(json.loads(path.read_text())):
            for target in panel.get("targets", []):
                yield f"{path.name} / {panel['title']}", target["expr"]


def panels(dashboard: dict) -> Iterator[dict]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])  # panels inside collapsed rows


def test_rules_and_dashboards_use_only_exported_metrics() -> None:
    exported = metrics.sample_names() | PROMETHEUS_SERIES
    recorded = {r["record"] for r in rules("record")}
    queries = [
        (f"rule {r.get('alert') or r['record']}", r["expr"])
        for r in rules("alert") + rules("record")
    ]
    queries += list(dashboard_exprs())
    assert len(queries) > 30
    unknown = {
        (where, name)
        for where, expr in queries
        for name in metric_names(expr)
        if name not in (recorded if ":" in name else exported)
    }
    assert not unknown, f"not exported by monitoring/metrics.py nor recorded: {sorted(unknown)}"


def test_dashboard_queries_are_valid_promql(promtool: str, tmp_path: Path) -> None:
    # promtool has no offline query checker; as recording rules, the queries get parsed
    rules_file = tmp_path / "dashboard_queries.yml"
    queries = [
        {"record": f"dashboard:query:{i}", "expr": expr.replace("$__rate_interval", "5m")}
        for i, (_, expr) in enumerate(dashboard_exprs())
    ]
    rules_file.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": queries}]}))
    result = run(promtool, "check", "rules", str(rules_file))
    assert result.returncode == 0, result.stdout + result.stderr


# --- Grafana ---------------------------------------------------------------------------------


def test_dashboards_use_the_provisioned_datasource() -> None:
    provisioned = load(MONITORING / "grafana" / "provisioning" / "datasources" / "prometheus.yml")
    (datasource,) = provisioned["datasources"]
    assert datasource["uid"] == "prometheus"
    assert datasource["url"] == "http://prometheus:9090"
    assert DASHBOARDS
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text())
        assert dashboard["uid"] and dashboard["title"]
        for panel in panels(dashboard):
            if panel["type"] == "row":
                continue
            title = panel["title"]
            assert panel["datasource"] == {"type": "prometheus", "uid": "prometheus"}, title
            assert panel["targets"], title
            for target in panel["targets"]:
                assert target["datasource"]["uid"] == "prometheus", title


def test_dashboard_provider_loads_files() -> None:
    providers = load(MONITORING / "grafana" / "provisioning" / "dashboards" / "dashboards.yml")
    (provider,) = providers["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"]


# --- docs ------------------------------------------------------------------------------------


def test_readme_documents_every_metric_and_alert() -> None:
    readme = (MONITORING / "README.md").read_text()
    families = {
        family.name + ("_total" if family.type == "counter" else "")
        for metric in metrics.ALL_METRICS
        for family in metric.describe()
    }
    missing = sorted(
        n for n in families | {r["alert"] for r in rules("alert")} if f"`{n}" not in readme
    )
    assert not missing, f"monitoring/README.md does not describe {missing}"
