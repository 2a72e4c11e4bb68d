"""A DocExtract webhook receiver in Flask, following the customer docs.

    pip install 'flask>=3.0'
    WEBHOOK_SECRET=whsec_... python receiver.py          # PORT (3000) and HOST (127.0.0.1) optional

It checks X-DocExtract-Signature over the raw body before anything else,
handles each event once (keyed on X-DocExtract-Event-Id, which is the same on
every retry), answers 200 quickly, and logs event types it does not know.
"""

import hashlib
import hmac
import json
import logging
import os
import threading

from flask import Flask, request
from werkzeug.serving import make_server

logging.basicConfig(level=logging.INFO, format="%(asctime)s flask-receiver %(message)s")
log = logging.getLogger("receiver")

app = Flask(__name__)
WEBHOOK_SECRET = os.environ.get("WEBHOOK_SECRET", "")


class ProcessedEvents:
    """Event ids already handled. In production use a table with the event id as primary key."""

    def __init__(self) -> None:
        self._ids: set[str] = set()
        self._lock = threading.Lock()  # the server handles requests in threads

    def claim(self, event_id: str) -> bool:
        """True for the first request with this id; a retry of it gets False."""
        with self._lock:
            if event_id in self._ids:
                return False
            self._ids.add(event_id)
            return True

    def release(self, event_id: str) -> None:
        """Forget an id whose handling failed, so the retry handles it again."""
        with self._lock:
            self._ids.discard(event_id)


processed = ProcessedEvents()


@app.route("/webhooks/docextract", methods=["POST"])
def webhook_handler() -> tuple[str, int]:
    # Verify the signature over the raw bytes, before parsing anything.
    signature = request.headers.get("X-DocExtract-Signature", "")
    payload = request.get_data()
    if not verify_webhook_signature(payload, signature):
        log.warning("rejected: invalid signature")
        return "Invalid signature", 401

    event_id = request.headers.get("X-DocExtract-Event-Id", "")
    try:
        event = json.loads(payload)
    except ValueError:
        return "Invalid JSON", 400
    if not event_id:
        return "Missing X-DocExtract-Event-Id", 400

    # Idempotency: the same event arrives again when our 200 got lost; handle it once.
    if not processed.claim(event_id):
        log.info("duplicate %s skipped", event_id)
        return "OK", 200
    try:
        handle_webhook_event(event_id, event)
    except Exception:
        processed.release(event_id)
        log.exception("handling %s failed; DocExtract will retry", event_id)
        return "Handler failed", 500

    # Respond quickly: DocExtract waits 5 seconds. Queue slow work instead of doing it here.
    return "OK", 200


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


if __name__ == "__main__":
    if not WEBHOOK_SECRET:
        raise SystemExit("set WEBHOOK_SECRET to the endpoint's whsec_ secret")
    # app.run() would do; make_server also reports the port when PORT=0 picks a free one.
    server = make_server(os.environ.get("HOST", "127.0.0.1"), int(os.environ.get("PORT", "3000")), app,
                         threaded=True)
    log.info("listening on http://%s:%d/webhooks/docextract", server.host, server.server_port)
    server.serve_forever()
