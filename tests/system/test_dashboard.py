"""The Webhooks dashboard in headless Chromium, against the real API server, database, worker and receiver.

The browser is Debian's ``chromium`` driven by Playwright (no downloaded browser);
every step waits on a condition of the page, never on time. Set
``UPDATE_SCREENSHOTS=1`` to refresh docs/dashboard-logs.png from a run.
"""

import json
import logging
import os
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest
from aiohttp import web
from playwright.async_api import Page, async_playwright, expect

import outbox
from deliverer.api.app import create_app
from deliverer.delivery.worker import Result, Worker
from deliverer.registry import apikeys, endpoints
from tests.support import Receiver, job_completed, job_failed, settings_for
from tests.support.paths import DOCS

CHROMIUM = Path("/usr/bin/chromium")
# Without the background-networking flags Chromium tries to reach Google's services at start.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]
SCREENSHOT = DOCS / "dashboard-logs.png"

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="needs Debian's Chromium at /usr/bin/chromium: apt-get install chromium chromium-driver (.ci/run does)")

expect.set_options(timeout=15_000)  # an upper bound on a loaded 2-core machine, not a pause


@dataclass
class Dashboard:
    base: str
    key: str
    requested: list[str] = field(default_factory=list)


@pytest.fixture
async def dashboard(dsn: str, db: psycopg.Connection) -> AsyncIterator[Dashboard]:
    """The real API app on loopback, with its access log on, and an API key of org_a."""
    runner = web.AppRunner(create_app(settings_for(dsn)))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    yield Dashboard(f"http://127.0.0.1:{runner.addresses[0][1]}", apikeys.create(db, "org_a").key)
    await runner.cleanup()


@pytest.fixture
async def page(dashboard: Dashboard, tmp_path: Path) -> AsyncIterator[Page]:
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        context = await browser.new_context(viewport={"width": 1280, "height": 900},
                                            permissions=["clipboard-read", "clipboard-write"])
        page = await context.new_page()
        page.on("request", lambda request: dashboard.requested.append(request.url))
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        # Chromium reports every 4xx answer as a console error; those are expected here, anything else is not.
        page.on("console", lambda message: errors.append(message.text)
                if message.type == "error" and not message.text.startswith("Failed to load resource") else None)
        yield page
        await browser.close()
    assert errors == [], "the page logged errors"


def publish(dsn: str, event_type: str, data: dict) -> str:
    with psycopg.connect(dsn) as conn:
        event_id = outbox.publish(conn, event_type, data, org_id="org_a")
        conn.commit()
    return event_id


async def deliver(dsn: str, **settings: object) -> list[Result]:
    async with Worker(settings_for(dsn, **settings)) as worker:
        return await worker.run_once()


async def sign_in(page: Page, dashboard: Dashboard) -> None:
    await page.goto(f"{dashboard.base}/dashboard")
    await page.get_by_label("API key").fill(dashboard.key)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.get_by_role("heading", name="Webhooks", level=1)).to_be_visible()


async def add_endpoint(page: Page, url: str, events: list[str] | None = None) -> str:
    """Fill in the add form (all events unless given) and return the secret the dialog shows."""
    form = page.get_by_role("form", name="Add an endpoint")
    await form.get_by_label("Webhook URL").fill(url)
    if events is not None:
        await form.get_by_label("All events").uncheck()
        for event_type in events:
            await form.get_by_label(event_type).check()
    await form.get_by_role("button", name="Save endpoint").click()
    dialog = page.get_by_role("dialog")
    await expect(dialog).to_contain_text("copy its signing secret")
    secret = await dialog.get_by_label("Webhook secret").input_value()
    assert secret.startswith("whsec_")
    return secret


class TestDashboard:
    async def test_add_test_fail_replay_and_see_it_delivered(self, page: Page, dashboard: Dashboard, dsn: str,
                                                             receiver: Receiver, tmp_path: Path,
                                                             caplog: pytest.LogCaptureFixture) -> None:
        """A customer signs in, adds an endpoint, tests it, watches a failure in the logs and replays it to delivery."""
        caplog.set_level(logging.INFO, logger="aiohttp.access")
        await page.goto(f"{dashboard.base}/dashboard")
        await page.get_by_label("API key").fill("sk_live_not_a_real_key")
        await page.get_by_label("API key").press("Enter")
        await expect(page.locator("#signin-error")).to_have_text(
            "the API key is not valid; create one with `deliverer keys create`")
        await page.get_by_label("API key").fill(dashboard.key)
        await page.get_by_label("API key").press("Enter")
        await expect(page.get_by_role("heading", name="Webhooks", level=1)).to_be_focused()

        secret = await add_endpoint(page, receiver.url("/hook"), ["job.completed", "webhook.test"])
        dialog = page.get_by_role("dialog")
        await dialog.get_by_role("button", name="Copy secret").click()
        await expect(dialog.get_by_role("status")).to_have_text("Copied to the clipboard.")
        assert await page.evaluate("navigator.clipboard.readText()") == secret
        receiver.secrets["/hook"] = secret
        await dialog.get_by_role("button", name="I have copied it").click()
        await expect(dialog).to_be_hidden()
        assert secret not in await page.content(), "the secret is shown once, then leaves the page"
        card = page.get_by_role("listitem").filter(has_text=receiver.url("/hook"))
        await expect(card).to_contain_text("job.completed, webhook.test")
        await expect(card).to_contain_text("No attempts yet")

        await card.get_by_role("button", name="Send test event").click()
        result = card.get_by_role("status")
        await expect(result).to_contain_text("Delivered Test event: HTTP 200 in")
        [test_request] = receiver.requests
        assert test_request.signature_ok is True, "the secret the page showed signs the deliveries"
        test_event_id = test_request.headers["X-DocExtract-Event-Id"]
        await expect(result).to_contain_text(test_event_id)
        await expect(card).to_contain_text("100% (1 of 1 attempt succeeded)")

        await card.get_by_role("button", name="View logs").click()
        await expect(page.get_by_role("heading", name="Delivery logs")).to_be_visible()
        rows = page.locator("#logs-rows tr")
        await expect(rows).to_have_count(1)
        await expect(rows.first).to_contain_text("webhook.test")
        await expect(rows.first).to_contain_text("Succeeded")

        await page.get_by_label("Refresh every 3 s").check()
        receiver.fail_first("/hook", len(receiver.to("/hook")) + 1, status=503)  # the next request fails
        event_id = publish(dsn, "job.completed", job_completed())
        [failure] = await deliver(dsn, retry_delays=())
        assert not failure.outcome.succeeded
        delivery_id = "dlv_" + failure.claimed.delivery_id.hex
        failed_row = rows.filter(has_text="job.completed")
        await expect(rows).to_have_count(2)  # appears by auto-refresh alone
        for text in ("503", "Failed", "HTTP 503", "ms"):
            await expect(failed_row).to_contain_text(text)

        await page.get_by_label("Outcome").select_option("failed")
        await expect(rows).to_have_count(1)
        await expect(rows.first).to_contain_text("job.completed")
        await page.get_by_label("Outcome").select_option("")
        await page.get_by_label("Event type").select_option("webhook.test")
        await expect(rows).to_have_count(1)
        await expect(rows.first).to_contain_text("webhook.test")
        await page.get_by_label("Event type").select_option("")
        await expect(rows).to_have_count(2)

        await failed_row.get_by_role("button", name="Details").click()
        await expect(page.get_by_role("heading", level=1)).to_have_text(f"Delivery {delivery_id}")
        summary = page.locator("#delivery-summary")
        await expect(summary).to_contain_text("Failed")
        history = page.locator("#history-rows tr")
        await expect(history).to_have_count(2)  # scheduled, and the attempt's one row
        await expect(history.nth(1)).to_contain_text("HTTP 503")
        payload = page.locator("#delivery-payload")
        await expect(payload).to_contain_text("INV-2024-001")
        assert json.loads(await payload.text_content() or "") == {"event": "job.completed", "data": job_completed()}

        receiver.behaviours.pop("/hook")  # the receiver has recovered
        replay = page.get_by_role("button", name="Replay", exact=True)
        await replay.click()
        await expect(page.locator("#status")).to_contain_text("attempt series 2 has started")
        await expect(history.filter(has_text="Replay requested")).to_have_count(1)
        await expect(replay).to_be_disabled()
        await deliver(dsn)
        await expect(summary).to_contain_text("Delivered")  # by the page's own polling
        await expect(history.filter(has_text="Succeeded")).to_have_count(1)
        assert receiver.event_ids("/hook") == [test_event_id, event_id, event_id]
        assert [r.signature_ok for r in receiver.requests] == [True, True, True]

        await page.get_by_role("button", name="Back to logs").click()
        await expect(rows).to_have_count(3)
        await expect(rows.first).to_contain_text("job.completed")
        await expect(rows.first).to_contain_text("1 (replay 1)")
        await expect(rows.first).to_contain_text("Succeeded")
        assert [await r.get_attribute("data-outcome") for r in await rows.all()] == ["succeeded", "failed", "succeeded"]
        await page.mouse.move(0, 0)  # no hover highlight in the picture
        pager = await page.get_by_role("navigation", name="Log pages").bounding_box()
        assert pager is not None
        await page.screenshot(path=SCREENSHOT if os.environ.get("UPDATE_SCREENSHOTS") else tmp_path / "logs.png",
                              clip={"x": 0, "y": 0, "width": 1280, "height": pager["y"] + pager["height"] + 24})

        assert all(url.startswith(dashboard.base + "/") for url in dashboard.requested), "nothing but this server"
        assert not any(dashboard.key in url for url in dashboard.requested), "the key is never in a URL"
        assert "GET /dashboard " in caplog.text, "the access log was captured"
        assert dashboard.key not in caplog.text, "the key is never in a log"
        assert await page.evaluate("[localStorage.length, document.cookie]") == [0, ""]

    async def test_edit_disable_rotate_page_replay_and_delete(self, page: Page, dashboard: Dashboard, dsn: str,
                                                              db: psycopg.Connection, receiver: Receiver) -> None:
        """Events, enabling, the secret, log pages, replays from the logs and deletion are all managed from the page."""
        await sign_in(page, dashboard)
        receiver.secrets["/hook"] = await add_endpoint(page, receiver.url("/hook"))
        await page.get_by_role("button", name="I have copied it").click()
        card = page.get_by_role("listitem").filter(has_text=receiver.url("/hook"))
        await expect(card).to_contain_text("All events")

        await card.get_by_role("button", name="Edit").click()
        edit = page.get_by_role("dialog")
        await edit.get_by_label("Webhook URL").fill("ftp://example.com/hook")
        await edit.get_by_role("button", name="Save changes").click()
        await expect(edit.get_by_role("alert")).to_contain_text("must be an absolute https:// URL")
        await edit.get_by_label("Webhook URL").fill(receiver.url("/hook"))
        await edit.get_by_label("All events").uncheck()
        await edit.get_by_label("job.failed").check()
        await edit.get_by_role("button", name="Save changes").click()
        await expect(edit).to_be_hidden()
        await expect(card.locator("dd").nth(1)).to_have_text("job.failed")
        [stored] = endpoints.list_all(db, "org_a")
        assert stored.event_types == ["job.failed"]
        assert (stored.max_in_flight, stored.rate_limit) == (None, None), "untouched limits stay the default"
        await expect(card).to_contain_text("Max in flightDefault")

        await card.get_by_role("button", name="Edit").click()
        await edit.get_by_label("Max requests in flight").fill("0")
        await edit.get_by_role("button", name="Save changes").click()
        await expect(edit.get_by_role("alert")).to_have_text(
            "max_in_flight must be a whole number from 1 to 1000 (requests open at once), "
            "or null for the deployment's default")
        await edit.get_by_label("Max requests in flight").fill("5")
        await edit.get_by_label("Rate limit").fill("2.5")
        await edit.get_by_role("button", name="Save changes").click()
        await expect(edit).to_be_hidden()
        await expect(card).to_contain_text("5 requests at once")
        await expect(card).to_contain_text("2.5 per second")
        [stored] = endpoints.list_all(db, "org_a")
        assert (stored.max_in_flight, stored.rate_limit, stored.event_types) == (5, 2.5, ["job.failed"])
        await card.get_by_role("button", name="Edit").click()
        await expect(edit.get_by_label("Max requests in flight")).to_have_value("5")
        await edit.get_by_label("Max requests in flight").fill("")  # empty: back to the deployment's default
        await edit.get_by_label("Rate limit").fill("")
        await edit.get_by_role("button", name="Save changes").click()
        await expect(edit).to_be_hidden()
        await expect(card).to_contain_text("Rate limitDefault")
        assert (endpoints.list_all(db, "org_a")[0].max_in_flight, endpoints.list_all(db, "org_a")[0].rate_limit) == (
            None, None)

        await expect(card).to_contain_text("Delivery orderAs they come, in parallel")
        await card.get_by_role("button", name="Edit").click()
        await edit.get_by_label("Deliver in order").check()
        await edit.get_by_role("button", name="Save changes").click()
        await expect(edit).to_be_hidden()
        await expect(card).to_contain_text("Delivery orderIn order (one at a time per ordering key)")
        assert endpoints.list_all(db, "org_a")[0].ordering == "fifo"
        await card.get_by_role("button", name="Edit").click()
        await expect(edit.get_by_label("Deliver in order")).to_be_checked()
        await edit.get_by_label("Deliver in order").uncheck()
        await edit.get_by_role("button", name="Save changes").click()
        await expect(card).to_contain_text("Delivery orderAs they come, in parallel")
        assert endpoints.list_all(db, "org_a")[0].ordering == "none"

        await card.get_by_role("button", name="Disable").click()
        await expect(card).to_contain_text("Disabled")
        await card.get_by_role("button", name="Send test event").click()
        await expect(card.get_by_role("status")).to_contain_text(
            "Test event not sent: endpoint " + stored.id + " is disabled; enable it before sending a test event")
        await card.get_by_role("button", name="Enable").click()
        await expect(card.get_by_role("button", name="Disable")).to_be_focused()
        await expect(card).to_contain_text("Enabled")

        await card.get_by_role("button", name="Rotate secret").click()
        confirm = page.get_by_role("dialog")
        await expect(confirm).to_contain_text("the current one stops working at once")
        await page.keyboard.press("Escape")
        await expect(confirm).to_be_hidden()
        await card.get_by_role("button", name="Rotate secret").click()
        await confirm.get_by_role("button", name="Rotate secret").click()
        await expect(confirm).to_contain_text("New signing secret")
        rotated = await confirm.get_by_label("Webhook secret").input_value()
        assert rotated.startswith("whsec_") and rotated != receiver.secrets["/hook"]
        receiver.secrets["/hook"] = rotated
        await confirm.get_by_role("button", name="I have copied it").click()
        await card.get_by_role("button", name="Send test event").click()
        await expect(card.get_by_role("status")).to_contain_text("Delivered")
        assert [r.signature_ok for r in receiver.requests] == [True]

        event_ids = [publish(dsn, "job.failed", job_failed(job_id=f"job_{n}")) for n in range(11)]
        assert len(await deliver(dsn)) == 11
        await page.reload()  # the key survives a reload of this tab
        await card.get_by_role("button", name="View logs").click()
        await page.get_by_label("Rows per page").select_option("10")
        rows = page.locator("#logs-rows tr")
        await expect(rows).to_have_count(10)
        await expect(page.get_by_role("button", name="Newer")).to_be_disabled()
        first_page = [await r.get_attribute("data-delivery-id") for r in await rows.all()]
        await page.get_by_role("button", name="Older").click()
        await expect(page.locator("#logs-page")).to_have_text("Page 2")
        await expect(rows).to_have_count(2)
        await expect(page.get_by_role("button", name="Older")).to_be_disabled()
        second_page = [await r.get_attribute("data-delivery-id") for r in await rows.all()]
        all_ids = {"dlv_" + row[0].hex for row in db.execute("SELECT delivery_id FROM delivery_state")}
        assert sorted(first_page + second_page) == sorted(all_ids) and len(all_ids) == 12
        assert set(receiver.event_ids("/hook")[1:]) == set(event_ids)
        await page.get_by_role("button", name="Newer").click()
        await expect(page.locator("#logs-page")).to_have_text("Page 1")
        await expect(rows).to_have_count(10)
        pacing = page.locator("#logs-pacing")
        await expect(pacing).to_contain_text(re.compile(r"^0 of \d+ requests open"))  # from endpoint_flow, live
        db.execute("UPDATE endpoint_flow SET paused_until = now() + interval '1 hour'")
        await page.get_by_role("button", name="Refresh now").click()
        await expect(pacing).to_contain_text("paused until ")
        db.execute("UPDATE endpoint_flow SET paused_until = NULL")

        await rows.first.get_by_role("button", name="Replay").click()  # the docs' way: replay from the logs
        await expect(page.locator("#status")).to_contain_text("starts attempt series 2")
        await rows.first.get_by_role("button", name="Replay").click()
        await expect(page.locator("#alert")).to_have_text(
            "the delivery is pending; replay it once it has been delivered or has failed")
        await deliver(dsn)
        await page.get_by_role("button", name="Refresh now").click()
        await expect(rows.first).to_contain_text("1 (replay 1)")
        await expect(rows.first).to_contain_text("Succeeded")

        await page.get_by_role("button", name="Back to endpoints").click()
        await card.get_by_role("button", name="Delete").click()
        await expect(confirm).to_contain_text("Delete this endpoint?")
        await confirm.get_by_role("button", name="Cancel").click()
        await expect(card).to_be_visible()
        await card.get_by_role("button", name="Delete").click()
        await confirm.get_by_role("button", name="Delete endpoint").click()
        await expect(card).to_have_count(0)
        await expect(page.get_by_text("No endpoints yet")).to_be_visible()
        assert endpoints.list_all(db, "org_a") == []

        await page.get_by_role("button", name="Sign out").click()
        await expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
        assert await page.evaluate("sessionStorage.length") == 0


async def test_cards_show_header_names_and_the_auth_type_never_their_values(
        page: Page, dashboard: Dashboard, db: psycopg.Connection) -> None:
    """An endpoint's custom headers are listed by name and its auth by type; no value reaches the page."""
    endpoints.add(db, org_id="org_a", url="https://example.com/with-auth", options=endpoints.RequestOptions(
        headers={"X-Tenant": "acme", "X-Api-Key": "k-123"}, auth={"type": "bearer", "token": "t0k3n-abc"}))
    endpoints.add(db, org_id="org_a", url="https://example.com/plain")
    await sign_in(page, dashboard)
    card = page.get_by_role("listitem").filter(has_text="https://example.com/with-auth")
    await expect(card).to_contain_text("Custom headersX-Api-Key, X-Tenant")
    await expect(card).to_contain_text("AuthenticationBearer token")
    plain = page.get_by_role("listitem").filter(has_text="https://example.com/plain")
    await expect(plain).to_contain_text("Custom headersNone")
    await expect(plain).to_contain_text("AuthenticationNone")
    content = await page.content()
    assert "acme" not in content and "k-123" not in content and "t0k3n-abc" not in content
