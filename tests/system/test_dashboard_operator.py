"""The dashboard for the operator: the operator event types are offered to the operator org's key, and only to it.

The rest of the dashboard is tests/system/test_dashboard.py, whose browser and helpers this reuses.
"""

from collections.abc import AsyncIterator

import psycopg
import pytest
from aiohttp import web
from playwright.async_api import Page, expect

from deliverer.api.app import create_app
from deliverer.registry import apikeys
from outbox.catalog import OPERATOR_EVENT_TYPES, OPERATOR_ORG
from tests.support import settings_for
from tests.system.test_dashboard import Dashboard, add_endpoint, page, sign_in

__all__ = ["page"]  # the browser fixture, which uses this module's dashboard


@pytest.fixture(params=[OPERATOR_ORG, "org_a"])
async def dashboard(request: pytest.FixtureRequest, dsn: str, db: psycopg.Connection) -> AsyncIterator[Dashboard]:
    """The real API app on loopback, with an API key of the operator org, then of a customer's."""
    runner = web.AppRunner(create_app(settings_for(dsn)))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    yield Dashboard(f"http://127.0.0.1:{runner.addresses[0][1]}", apikeys.create(db, request.param).key)
    await runner.cleanup()


async def test_operator_event_types_are_offered_to_the_operator_only(
        page: Page, dashboard: Dashboard, db: psycopg.Connection) -> None:
    """Signed in as the operator org, the add form lists the operator types and registers an endpoint for two
    of them; signed in as a customer, neither the form nor the log filter mentions them."""
    await sign_in(page, dashboard)
    form = page.get_by_role("form", name="Add an endpoint")
    operator = db.execute("SELECT org_id FROM api_key").fetchone() == (OPERATOR_ORG,)
    if not operator:
        for event_type in OPERATOR_EVENT_TYPES:
            await expect(form.get_by_label(event_type)).to_have_count(0)
        options = await page.locator("#filter-event-type option").all_text_contents()
        assert not set(options) & set(OPERATOR_EVENT_TYPES)
        return
    await add_endpoint(page, "https://ops.example/hook", ["endpoint.disabled", "delivery.exhausted"])
    stored = db.execute("SELECT org_id, event_types FROM webhook_endpoint").fetchall()
    assert stored == [(OPERATOR_ORG, ["endpoint.disabled", "delivery.exhausted"])]
