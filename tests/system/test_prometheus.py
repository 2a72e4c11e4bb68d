"""deploy/'s monitoring against a real Prometheus scraping a real `deliverer run` and `deliverer api`.

The scenario: healthy traffic to one endpoint, a dead endpoint (nothing listens
on its port, retries a tenth of a second apart so that its deliveries use their
six attempts in seconds), API requests, then the only worker stopped. Every
query of the Grafana dashboard must return numbers while it runs, and exactly the
alerts this scenario calls for must fire. The rules are deploy/'s expressions,
evaluated every second with their ``for:`` cut to a second
(tests/support/prometheus.py).
"""

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import psycopg

import outbox
from deliverer.registry import apikeys, endpoints
from tests.support import Receiver, add_endpoint, aeventually, count, webhook_test
from tests.support.deploy import dashboard_exprs
from tests.support.processes import WorkerProcess
from tests.support.prometheus import Prometheus, free_port, needs_prometheus

pytestmark = needs_prometheus

HEALTHY, DEAD = 30, 15  # events to each endpoint: 30 successes, 90 failed attempts, 15 deliveries failed for good
RATE_INTERVAL = "1m"  # Grafana's $__rate_interval, over the whole scenario
SHOULD_FIRE_WHILE_RUNNING = {"WebhookFailureRatioHigh", "WebhookDeliveriesFailingAfterLastAttempt"}
SHOULD_FIRE_AT_THE_END = SHOULD_FIRE_WHILE_RUNNING | {"WebhookNoDelivererUp"}


async def probe_port(worker: WorkerProcess) -> int:
    def logged() -> int | None:
        for line in worker.log().splitlines():
            if '"probes listening"' in line:
                return int(json.loads(line)["port"])
        return None
    return await aeventually(logged, lambda: f"the probe port in {worker.name}'s log:\n{worker.log()}")


def start_api(dsn: str, tmp_path: Path, port: int, metrics_port: int) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DELIVERER_") or k == "DELIVERER_SECRET_KEYS"}
    env |= {"DATABASE_URL": dsn, "DELIVERER_API_PORT": str(port), "DELIVERER_API_HOST": "127.0.0.1",
            "DELIVERER_METRICS_PORT": str(metrics_port), "DELIVERER_ALLOW_INSECURE_URLS": "1",
            "DELIVERER_LOG_FORMAT": "json"}
    with (tmp_path / "api.log").open("wb") as log:
        return subprocess.Popen([sys.executable, "-m", "deliverer", "api"], env=env, stdout=log, stderr=log,
                                stdin=subprocess.DEVNULL)


async def drive_the_api(api: str, key: str, healthy_id: str) -> None:
    """Requests to a few routes, answered 200 and 401, and a test event sent by the API's own sender."""
    headers = {"Authorization": f"Bearer {key}"}
    async with aiohttp.ClientSession() as http:
        async def answered() -> bool:
            async with http.get(f"{api}/v1/webhooks", headers=headers) as response:
                return response.status == 200
        await aeventually(answered, "the API to answer", ignoring=(aiohttp.ClientError,), interval=0.1)
        async with http.post(f"{api}/v1/webhooks/test", headers=headers, json={"webhook_id": healthy_id}) as response:
            assert response.status == 200 and (await response.json())["delivered"] is True
        async with http.get(f"{api}/v1/events", headers=headers) as response:
            assert response.status == 200
        async with http.get(f"{api}/v1/webhooks") as response:
            assert response.status == 401


async def test_dashboard_panels_have_data_and_the_right_alerts_fire(
        dsn: str, db: psycopg.Connection, receiver: Receiver, tmp_path: Path) -> None:
    """Every panel's query returns numbers; the failure alerts fire for the dead endpoint, the no-deliverer
    alert once the only worker stops, and no other alert does."""
    healthy = add_endpoint(db, receiver, "/ok", org_id="org_ok")
    endpoints.add(db, org_id="org_dead", url="http://127.0.0.1:9/dead", allow_insecure=True)  # nothing listens
    key = apikeys.create(db, "org_ok").key
    worker = WorkerProcess(dsn, "w1", tmp_path, DELIVERER_RETRY_DELAYS="0.1,0.1,0.1,0.1,0.1")
    await worker.start()
    api_port, api_metrics_port = free_port(), free_port()
    api = start_api(dsn, tmp_path, api_port, api_metrics_port)
    try:
        worker_port = await probe_port(worker)
        targets = {"deliverer-worker": [("docextract-webhooks-deliverer-0", worker_port)],
                   "deliverer-api": [("docextract-webhooks-api-0", api_metrics_port)]}
        async with Prometheus(tmp_path, targets) as prometheus:
            # Counters seen at 0 first: increase() and rate() count from the first scrape.
            await aeventually(_both_up(prometheus), lambda: f"both targets up; Prometheus:\n{prometheus.log()}")

            with psycopg.connect(dsn) as conn:
                outbox.publish_many(conn, [outbox.Event("webhook.test", webhook_test(), "org_ok")] * HEALTHY)
                outbox.publish_many(conn, [outbox.Event("webhook.test", webhook_test(), "org_dead")] * DEAD)
                conn.commit()
            # Twice, a scrape apart: a route's series appears with its first request, which rate() cannot
            # see; traffic that goes on, as in production, is counted from the second.
            await drive_the_api(f"http://127.0.0.1:{api_port}", key, healthy.id)
            await aeventually(lambda: prometheus.query("deliverer_api_request_duration_seconds_count"),
                              "the API's first requests scraped")
            await drive_the_api(f"http://127.0.0.1:{api_port}", key, healthy.id)
            await aeventually(lambda: count(db, "delivery_queue") == 0, "every delivery finished", timeout=30)
            await aeventually(_scraped_failures(prometheus), "the final failures scraped")

            exprs = [e.replace("$__rate_interval", RATE_INTERVAL) for e in dashboard_exprs()]
            for expr in exprs:
                await aeventually(lambda expr=expr: prometheus.has_data(expr),
                                  lambda expr=expr: f"numbers from the panel query {expr}", interval=0.25)
            await aeventually(_firing(prometheus, SHOULD_FIRE_WHILE_RUNNING),
                              lambda: f"exactly {sorted(SHOULD_FIRE_WHILE_RUNNING)} firing", interval=0.25)

            assert await worker.stop() == 0
            await aeventually(_firing(prometheus, SHOULD_FIRE_AT_THE_END),
                              lambda: f"exactly {sorted(SHOULD_FIRE_AT_THE_END)} firing", interval=0.25)
            # Every rule was evaluated without an error: the others are quiet because their conditions do not hold.
            assert set((await prometheus.rule_health()).values()) == {"ok"}
            assert await prometheus.firing() == SHOULD_FIRE_AT_THE_END
    finally:
        if worker.running:
            worker.kill()
        api.terminate()
        await asyncio.to_thread(api.wait, 30)


def _both_up(prometheus: Prometheus) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        up = await prometheus.query("up")
        return sorted((s["job"], v) for s, v in up) == [("deliverer-api", 1.0), ("deliverer-worker", 1.0)]
    return check


def _scraped_failures(prometheus: Prometheus) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        result = await prometheus.query('sum(deliverer_deliveries_failed_total{job="deliverer-worker"})')
        return [v for _, v in result] == [float(DEAD)]
    return check


def _firing(prometheus: Prometheus, expected: set[str]) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return await prometheus.firing() == expected
    return check
