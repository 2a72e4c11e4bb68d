"""deploy/ held to the code without rendering anything: the dashboard, the alerts, the Dockerfile, the docs.

What needs kubectl or promtool is in tests/system/test_deploy.py.
"""

import json
import re

from prometheus_client import CollectorRegistry

from deliverer.ops.metrics import Metrics
from tests.support.deploy import DASHBOARD, alert_rules, dashboard_exprs
from tests.support.paths import DEPLOY, DOCS


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
    """The operations page's metrics table lists every metric family the code exports."""
    page = (DOCS / "operations.md").read_text()
    missing = sorted({family for family in exported_series().values() if f"`{family}" not in page})
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


def test_image_installs_the_deliverer_extra() -> None:
    """The image builds and installs the package with its [deliverer] extra, which the worker and the API need,
    and [otel], which exports their spans."""
    runs = [line for line in (DEPLOY / "Dockerfile").read_text().splitlines() if line.startswith("RUN pip ")]
    assert len(runs) == 2 and all("[deliverer,otel]" in line for line in runs), runs
