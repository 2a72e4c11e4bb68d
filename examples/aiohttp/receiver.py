"""A DocExtract webhook receiver in aiohttp: the customer docs' receiver, asynchronous.

    pip install 'aiohttp>=3.9'
    WEBHOOK_SECRET=whsec_... python receiver.py          # PORT (3000) and HOST (127.0.0.1) optional

It checks X-DocExtract-Signature over the raw body before anything else,
handles each event once (keyed on X-DocExtract-Event-Id, which is the same on
every retry), answers 200 quickly, and logs event types it does not know.
"""

import asyncio
import hashlib
import hmac
import json
import logging
import os
import signal

from aiohttp import web

logging.basicConfig(level=logging.INFO, format="%(asctime)s aiohttp-receiver %(message)s")
log = logging.getLogger("receiver")

WEBHOOK_SECRET = os.environ.get("WEBHOOK_SECRET", "")

# Event ids already handled. In production use a table with the event id as primary key.
# One event loop serves every request, and nothing awaits between the check and the add.
processed: set[str] = set()


async def webhook_handler(request: web.Request) -> web.Response:
    # Verify the signature over the raw bytes, before parsing anything.
    payload = await request.read()
    signature = request.headers.get("X-DocExtract-Signature", "")
    if not verify_webhook_signature(payload, signature):
        log.warning("rejected: invalid signature")
        return web.Response(status=401, text="Invalid signature")

    event_id = request.headers.get("X-DocExtract-Event-Id", "")
    try:
        event = json.loads(payload)
    except ValueError:
        return web.Response(status=400, text="Invalid JSON")
    if not event_id:
        return web.Response(status=400, text="Missing X-DocExtract-Event-Id")

    # Idempotency: the same event arrives again when our 200 got lost; handle it once.
    if event_id in processed:
        log.info("duplicate %s skipped", event_id)
        return web.Response(text="OK")
    processed.add(event_id)
    try:
        handle_webhook_event(event_id, event)
    except Exception:
        processed.discard(event_id)
        log.exception("handling %s failed; DocExtract will retry", event_id)
        return web.Response(status=500, text="Handler failed")

    # Respond quickly: DocExtract waits 5 seconds. Queue slow work instead of doing it here.
    return web.Response(text="OK")


def verify_webhook_signature(payload: bytes, signature: str) -> bool:
    expected_signature = hmac.new(WEBHOOK_SECRET.encode(), payload, hashlib.sha256).hexdigest()
    return hmac.compare_digest(signature.encode(), expected_signature.encode())


def handle_webhook_event(event_id: str, event: dict) -> None:
    event_type = event.get("event")
    data = event.get("data") or {}
    if event_type == "job.completed":
        log.info("handled job.completed %s: job %s extracted %s", event_id, data["id"], sorted(data["extracted_data"]))
    elif event_type == "job.failed":
        details = data["error_details"]
        log.info("handled job.failed %s: job %s %s: %s", event_id, data["id"], details["code"], details["message"])
    elif event_type == "credits.low_balance":
        log.info("handled credits.low_balance %s: %s credits left, about %s jobs", event_id,
                 data["current_balance"], data["estimated_jobs_remaining"])
    elif event_type == "credits.depleted":
        log.info("handled credits.depleted %s: depleted at %s, %s jobs queued", event_id,
                 data["depleted_at"], data["jobs_queued"])
    elif event_type == "webhook.test":
        log.info("handled webhook.test %s: %s", event_id, data["message"])
    else:
        log.info("Unknown event type: %s (%s)", event_type, event_id)


async def main() -> None:
    if not WEBHOOK_SECRET:
        raise SystemExit("set WEBHOOK_SECRET to the endpoint's whsec_ secret")
    app = web.Application()
    app.router.add_post("/webhooks/docextract", webhook_handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, os.environ.get("HOST", "127.0.0.1"), int(os.environ.get("PORT", "3000")))
    await site.start()
    host, port = runner.addresses[0][:2]
    log.info("listening on http://%s:%d/webhooks/docextract", host, port)
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(signum, stop.set)
    await stop.wait()
    await runner.cleanup()


if __name__ == "__main__":
    asyncio.run(main())
