"""A real Prometheus (Debian's ``prometheus`` package) on loopback, scraping real deliverer processes.

Its configuration is made from deploy/: one scrape job per component the
PodMonitor selects (its ``jobLabel`` makes the job the component's name), the
PodMonitor's path, and the ``pod`` label Kubernetes service discovery gives
each target. Its rules are a copy of the PrometheusRule's groups with the same
expressions, only evaluated every second and with every ``for:`` cut to a
second, so that a scenario of seconds can show which alerts fire.
"""

import asyncio
import json
import math
import shutil
import socket
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from deliverer.dev.waiting import aeventually
from tests.support.paths import DEPLOY

INTERVAL = "1s"
needs_prometheus = pytest.mark.skipif(shutil.which("prometheus") is None,
                                      reason="prometheus is not installed (Debian package prometheus; .ci/run "
                                             "installs it)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def podmonitor() -> dict[str, Any]:
    spec: dict[str, Any] = yaml.safe_load((DEPLOY / "base" / "podmonitor.yaml").read_text())["spec"]
    return spec


def scrape_config(targets: dict[str, list[tuple[str, int]]]) -> dict[str, Any]:
    """What the PodMonitor makes of ``targets`` (component -> (pod name, metrics port) of each pod)."""
    monitor = podmonitor()
    [components] = [e["values"] for e in monitor["selector"]["matchExpressions"]
                    if e["key"] == monitor["jobLabel"]]
    assert set(targets) == set(components), f"the PodMonitor scrapes {components}"
    [endpoint] = monitor["podMetricsEndpoints"]
    return {
        "global": {"scrape_interval": INTERVAL, "scrape_timeout": INTERVAL, "evaluation_interval": INTERVAL},
        "rule_files": ["rules.yml"],
        "scrape_configs": [{
            "job_name": component,
            "metrics_path": endpoint["path"],
            "static_configs": [{"targets": [f"127.0.0.1:{port}"], "labels": {"pod": pod}} for pod, port in pods],
        } for component, pods in targets.items()],
    }


def rules_for_tests() -> dict[str, Any]:
    """deploy/'s alert rules as they are, but evaluated every second and pending for a second at most."""
    groups = yaml.safe_load((DEPLOY / "base" / "prometheusrule.yaml").read_text())["spec"]["groups"]
    for group in groups:
        group["interval"] = INTERVAL
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = INTERVAL
    return {"groups": groups}


class Prometheus:
    """``async with Prometheus(directory, targets) as prometheus:`` then ``await prometheus.query(expr)``."""

    def __init__(self, directory: Path, targets: dict[str, list[tuple[str, int]]]) -> None:
        self.directory = directory
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        (directory / "prometheus.yml").write_text(yaml.safe_dump(scrape_config(targets)))
        (directory / "rules.yml").write_text(yaml.safe_dump(rules_for_tests()))
        self.log_path = directory / "prometheus.log"
        self.proc: asyncio.subprocess.Process | None = None
        self.http: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> "Prometheus":
        with self.log_path.open("wb") as log:
            self.proc = await asyncio.create_subprocess_exec(
                "prometheus", f"--config.file={self.directory / 'prometheus.yml'}",
                f"--storage.tsdb.path={self.directory / 'data'}", f"--web.listen-address=127.0.0.1:{self.port}",
                cwd=self.directory, stdout=log, stderr=log, stdin=asyncio.subprocess.DEVNULL)
        self.http = aiohttp.ClientSession()
        await aeventually(self._ready, lambda: f"Prometheus ready at {self.url}; its log:\n{self.log()}",
                          ignoring=(aiohttp.ClientError,), interval=0.1)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.http is not None:
            await self.http.close()
        if self.proc is not None:
            self.proc.terminate()
            await asyncio.wait_for(self.proc.wait(), 30)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]

    async def _ready(self) -> bool:
        assert self.proc is not None and self.proc.returncode is None, f"Prometheus exited:\n{self.log()}"
        assert self.http is not None
        async with self.http.get(f"{self.url}/-/ready") as response:
            return response.status == 200

    async def _get(self, path: str, **params: str) -> Any:
        assert self.http is not None
        async with self.http.get(f"{self.url}{path}", params=params) as response:
            body = json.loads(await response.text())
        assert body["status"] == "success", body
        return body["data"]

    async def query(self, expr: str) -> list[tuple[dict[str, str], float]]:
        """An instant query: each series' labels and value (NaN where PromQL has no number)."""
        data = await self._get("/api/v1/query", query=expr)
        if data["resultType"] == "scalar":
            return [({}, float(data["result"][1]))]
        return [(series["metric"], float(series["value"][1])) for series in data["result"]]

    async def has_data(self, expr: str) -> bool:
        """Whether ``expr`` gives a number: at least one series whose value is not NaN. (A series broken
        down by a label may be NaN for a value with no requests in the window, as Grafana shows a gap.)"""
        return any(math.isfinite(value) for _, value in await self.query(expr))

    async def firing(self) -> set[str]:
        return {a["labels"]["alertname"] for a in (await self._get("/api/v1/alerts"))["alerts"]
                if a["state"] == "firing"}

    async def rule_health(self) -> dict[str, str]:
        """Each alert rule's health: "ok" once it has been evaluated without an error."""
        groups = (await self._get("/api/v1/rules"))["groups"]
        return {r["name"]: r["health"] for g in groups for r in g["rules"]}
