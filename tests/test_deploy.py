"""deploy/ is checked, not trusted: rendered, validated, and held to the metrics the code exports."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from prometheus_client import CollectorRegistry

from deliverer.delivery.worker import RECORD_GRACE
from deliverer.ops import probes
from deliverer.ops.metrics import Metrics
from deliverer.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
OVERLAYS = sorted(p.name for p in (DEPLOY / "overlays").iterdir())
DASHBOARD = DEPLOY / "grafana" / "docextract-webhooks.json"

needs_kubectl = pytest.mark.skipif(shutil.which("kubectl") is None,
                                   reason="kubectl is not installed (it renders the kustomize overlays)")
needs_promtool = pytest.mark.skipif(shutil.which("promtool") is None,
                                    reason="promtool is not installed (Debian package prometheus; .ci/run installs it)")


def render(overlay: str) -> list[dict[str, Any]]:
    out = subprocess.run(["kubectl", "kustomize", str(DEPLOY / "overlays" / overlay)],
                         capture_output=True, text=True, check=True).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def find(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]


def alert_rules() -> list[dict[str, Any]]:
    rule = yaml.safe_load((DEPLOY / "base" / "prometheusrule.yaml").read_text())
    return [r for group in rule["spec"]["groups"] for r in group["rules"]]


def dashboard_exprs() -> list[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [target["expr"] for panel in panels for target in panel["targets"]]


def exported_series() -> dict[str, str]:
    """Every series name the code can export, mapped to its metric family."""
    registry = CollectorRegistry()
    Metrics(registry)
    names = {}
    for family in registry.collect():
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}.get(family.type, [""])
        for suffix in suffixes:
            names[family.name + suffix] = family.name
    return names


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
class TestOverlays:
    def test_renders_and_passes_strict_validation(self, overlay: str, tmp_path: Path) -> None:
        """Every overlay renders, and its Kubernetes objects pass kubernetes-validate --strict."""
        out = subprocess.run(["kubectl", "kustomize", str(DEPLOY / "overlays" / overlay)],
                             capture_output=True, text=True, check=True).stdout
        rendered = tmp_path / f"{overlay}.yaml"
        rendered.write_text(out)
        validate = subprocess.run([sys.executable, "-m", "kubernetes_validate", "--strict", "--quiet", str(rendered)],
                                  capture_output=True, text=True)
        problems = [line for line in (validate.stdout + validate.stderr).splitlines()
                    if line.strip() and "Couldn't find schema" not in line]
        assert validate.returncode == 0 and not problems, validate.stdout + validate.stderr

    def test_deliverer_deployment_is_production_shaped(self, overlay: str) -> None:
        """≥ 2 replicas, no unavailable pods in a rollout, non-root, read-only, probes, a long enough grace."""
        objects = render(overlay)
        [deployment] = find(objects, "Deployment", "docextract-webhooks-deliverer")
        spec = deployment["spec"]
        pod = spec["template"]["spec"]
        [container] = pod["containers"]
        assert spec["replicas"] >= 2
        assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
        assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        [config] = find(objects, "ConfigMap", "docextract-webhooks")
        grace = float(config["data"].get("DELIVERER_SHUTDOWN_GRACE", Settings().shutdown_grace))
        assert pod["terminationGracePeriodSeconds"] > grace + RECORD_GRACE

    def test_exactly_one_autoscaler(self, overlay: str) -> None:
        """An overlay scales with KEDA or with an HPA, never both, and the target exists."""
        objects = render(overlay)
        scalers = find(objects, "ScaledObject") + find(objects, "HorizontalPodAutoscaler")
        assert len(scalers) == 1
        target = scalers[0]["spec"]["scaleTargetRef"]["name"]
        assert find(objects, "Deployment", target)

    def test_podmonitor_selects_both_deployments_by_their_metrics_port(self, overlay: str) -> None:
        """The PodMonitor's selector matches the worker and API pods, which name a metrics port."""
        objects = render(overlay)
        [monitor] = find(objects, "PodMonitor")
        match = monitor["spec"]["selector"]["matchLabels"]
        [expression] = monitor["spec"]["selector"]["matchExpressions"]
        port = monitor["spec"]["podMetricsEndpoints"][0]["port"]
        selected = []
        for deployment in find(objects, "Deployment"):
            labels = deployment["spec"]["template"]["metadata"]["labels"]
            in_expression = labels.get(expression["key"]) in expression["values"]
            if all(labels.get(k) == v for k, v in match.items()) and in_expression:
                selected.append(labels[monitor["spec"]["jobLabel"]])
                ports = [p["name"] for c in deployment["spec"]["template"]["spec"]["containers"] for p in c["ports"]]
                assert port in ports
        assert sorted(selected) == ["deliverer-api", "deliverer-worker"]


    def test_each_metrics_port_is_its_process_default(self, overlay: str) -> None:
        """The worker's and the API's "metrics" ports are the ports `deliverer run` and `deliverer api`
        serve their probes on when DELIVERER_METRICS_PORT is not set, and nothing sets it."""
        objects = render(overlay)
        [config] = find(objects, "ConfigMap", "docextract-webhooks")
        assert "DELIVERER_METRICS_PORT" not in config["data"]
        for name, default in (("docextract-webhooks-deliverer", probes.RUN_PORT),
                              ("docextract-webhooks-api", probes.API_PORT)):
            [deployment] = find(objects, "Deployment", name)
            [container] = deployment["spec"]["template"]["spec"]["containers"]
            assert not any(e["name"] == "DELIVERER_METRICS_PORT" for e in container.get("env", []))
            assert {p["name"]: p["containerPort"] for p in container["ports"]}["metrics"] == default


@needs_kubectl
def test_keda_query_runs_on_the_real_schema(db: psycopg.Connection) -> None:
    """The KEDA scaler's SQL is valid against schema.sql and counts due deliveries."""
    [scaled] = find(render("production"), "ScaledObject")
    query = scaled["spec"]["triggers"][0]["metadata"]["query"]
    assert db.execute(query).fetchone() == (0,)


@needs_promtool
def test_alert_rules_pass_promtool(tmp_path: Path) -> None:
    """The PrometheusRule's groups are a valid Prometheus rule file."""
    rule = yaml.safe_load((DEPLOY / "base" / "prometheusrule.yaml").read_text())
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(rule["spec"]))
    result = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_dashboard_expressions_pass_promtool(tmp_path: Path) -> None:
    """Every dashboard query parses as PromQL (checked as recording rules, with Grafana's variables filled in)."""
    rules = [{"record": f"dashboard:expr_{i}", "expr": expr.replace("$__rate_interval", "5m")}
             for i, expr in enumerate(dashboard_exprs())]
    path = tmp_path / "dashboard-rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dashboard_uses_a_datasource_variable() -> None:
    """Every panel and query reads from the ${datasource} variable, so the dashboard imports anywhere."""
    dashboard = json.loads(DASHBOARD.read_text())
    assert [v["name"] for v in dashboard["templating"]["list"] if v["type"] == "datasource"] == ["datasource"]
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}"
        assert all(t["datasource"]["uid"] == "${datasource}" for t in panel["targets"])


def test_alerts_and_dashboard_only_use_exported_metrics() -> None:
    """Every deliverer_* series named by an alert or a panel is one the code exports."""
    exported = exported_series()
    used = set()
    for expr in [r["expr"] for r in alert_rules()] + dashboard_exprs():
        used |= set(re.findall(r"\bdeliverer_[a-z_]+", expr))
    assert used, "no metric found: the regex or the files changed"
    assert sorted(used - set(exported)) == []


def test_every_exported_metric_is_documented() -> None:
    """The README's metrics table lists every metric family the code exports."""
    readme = (ROOT / "README.md").read_text()
    missing = sorted({family for family in exported_series().values() if f"`{family}" not in readme})
    assert missing == []


def test_alerts_cover_what_operators_need() -> None:
    """Alerts exist for backlog age, stalled workers, failure ratio, final failures and no deliverer at all."""
    names = {r["alert"] for r in alert_rules()}
    assert {"WebhookOldestDueDeliveryTooOld", "WebhookDelivererHeartbeatStale", "WebhookFailureRatioHigh",
            "WebhookDeliveriesFailingAfterLastAttempt", "WebhookNoDelivererUp"} <= names


def test_dockerfile_is_multi_stage_non_root_exec_form() -> None:
    """The image builds in two stages, runs as a numeric non-root user, and uses exec-form ENTRYPOINT."""
    lines = [line.strip() for line in (DEPLOY / "Dockerfile").read_text().splitlines()]
    assert sum(line.startswith("FROM ") for line in lines) >= 2
    [user] = [line for line in lines if line.startswith("USER ")]
    assert user.split()[1].isdigit() and user.split()[1] != "0"
    [entrypoint] = [line for line in lines if line.startswith("ENTRYPOINT ")]
    assert json.loads(entrypoint.removeprefix("ENTRYPOINT ")) == ["deliverer"]
