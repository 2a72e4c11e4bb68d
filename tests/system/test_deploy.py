"""deploy/ is checked, not trusted: rendered by kubectl, validated, and its queries checked by promtool.

The checks that only read files (dashboard, alerts, Dockerfile) are in tests/unit/test_deploy.py.
"""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import psycopg
import pytest
import yaml

from deliverer.delivery.worker import RECORD_GRACE
from deliverer.ops import probes
from deliverer.settings import Settings
from tests.support.deploy import OVERLAYS, dashboard_exprs, find, needs_kubectl, needs_promtool, render
from tests.support.paths import DEPLOY


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


def test_the_image_build_stage_copies_all_the_wheel_needs(tmp_path: Path) -> None:
    """The files the Dockerfile's build stage copies are enough to build the package's wheel, schema and license
    included."""
    lines = (DEPLOY / "Dockerfile").read_text().splitlines()
    build_stage = lines[:[i for i, line in enumerate(lines) if line.startswith("FROM ")][1]]
    context = tmp_path / "context"
    context.mkdir()
    for line in build_stage:
        if line.startswith("COPY "):
            *sources, target = line.split()[1:]
            for source in sources:
                destination = context / (source if target == "./" else target)
                if (DEPLOY.parent / source).is_dir():  # as COPY does: a symlink stays one (schema.sql is)
                    shutil.copytree(DEPLOY.parent / source, destination, symlinks=True)
                else:
                    shutil.copy(DEPLOY.parent / source, destination)
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                            "-w", str(tmp_path / "wheels"), str(context)], capture_output=True, text=True)
    assert built.returncode == 0, built.stdout + built.stderr
    [wheel] = (tmp_path / "wheels").glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "deliverer/storage/schema.sql" in names
    assert any(name.endswith(".dist-info/licenses/LICENSE") for name in names), names
