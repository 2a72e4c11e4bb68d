"""The customer docs' example payloads, copied verbatim (ids with their "..." included), and the builder calls
that reproduce them: what the unit tests of the builders and the integration test of publish compare against."""

import json
from datetime import datetime
from typing import Any

import outbox
from outbox import events

# The example payloads of the customer docs, copied verbatim (ids with their "..." included).
SEED_PAYLOADS = {
    "job.completed": """{
  "event": "job.completed",
  "data": {
    "id": "job_abc123...",
    "org_id": "org_xyz789...",
    "extractor_id": "ext_def456...",
    "status": "completed",
    "extracted_data": {
      "invoice_number": "INV-2024-001",
      "total_amount": 1250.50,
      "invoice_date": "2024-11-15"
    },
    "confidence": {
      "invoice_number": 0.98,
      "total_amount": 0.95,
      "invoice_date": 0.99
    },
    "processing_time_ms": 4532,
    "cost_credits": 2,
    "metadata": {
      "customer_id": "cust_123",
      "source": "email"
    },
    "created_at": "2024-11-23T10:00:00Z",
    "completed_at": "2024-11-23T10:00:05Z"
  }
}""",
    "job.failed": """{
  "event": "job.failed",
  "data": {
    "id": "job_abc123...",
    "org_id": "org_xyz789...",
    "extractor_id": "ext_def456...",
    "status": "failed",
    "error_details": {
      "code": "document_unreadable",
      "message": "Document quality is too low to extract text",
      "suggestion": "Please provide a higher quality scan or image"
    },
    "processing_time_ms": 1200,
    "cost_credits": 0,
    "metadata": {
      "customer_id": "cust_123"
    },
    "created_at": "2024-11-23T10:00:00Z",
    "failed_at": "2024-11-23T10:00:01Z"
  }
}""",
    "credits.low_balance": """{
  "event": "credits.low_balance",
  "data": {
    "org_id": "org_xyz789...",
    "current_balance": 50,
    "threshold": 100,
    "percentage_remaining": 2.5,
    "estimated_jobs_remaining": 25,
    "timestamp": "2024-11-23T10:00:00Z"
  }
}""",
    "credits.depleted": """{
  "event": "credits.depleted",
  "data": {
    "org_id": "org_xyz789...",
    "depleted_at": "2024-11-23T10:00:00Z",
    "jobs_queued": 5
  }
}""",
    "webhook.test": """{
  "event": "webhook.test",
  "data": {
    "message": "This is a test webhook event",
    "timestamp": "2024-11-23T10:00:00Z"
  }
}""",
}


SEED_ORG = "org_xyz789..."


def seed(event_type: str) -> dict[str, Any]:
    return json.loads(SEED_PAYLOADS[event_type])


def at(text: str) -> datetime:
    return datetime.fromisoformat(text)


def build_from_seed(event_type: str) -> outbox.Event:
    """Call the builder with the values of the seed's example, times as datetimes."""
    d = seed(event_type)["data"]
    if event_type == "job.completed":
        return events.job_completed(
            job_id=d["id"], org_id=d["org_id"], extractor_id=d["extractor_id"], extracted_data=d["extracted_data"],
            confidence=d["confidence"], processing_time_ms=d["processing_time_ms"], cost_credits=d["cost_credits"],
            metadata=d["metadata"], created_at=at(d["created_at"]), completed_at=at(d["completed_at"]))
    if event_type == "job.failed":
        e = d["error_details"]
        return events.job_failed(
            job_id=d["id"], org_id=d["org_id"], extractor_id=d["extractor_id"], code=e["code"],
            message=e["message"], suggestion=e["suggestion"], processing_time_ms=d["processing_time_ms"],
            cost_credits=d["cost_credits"], metadata=d["metadata"], created_at=at(d["created_at"]),
            failed_at=at(d["failed_at"]))
    if event_type == "credits.low_balance":
        return events.credits_low_balance(
            org_id=d["org_id"], current_balance=d["current_balance"], threshold=d["threshold"],
            percentage_remaining=d["percentage_remaining"], estimated_jobs_remaining=d["estimated_jobs_remaining"],
            timestamp=at(d["timestamp"]))
    if event_type == "credits.depleted":
        return events.credits_depleted(org_id=d["org_id"], depleted_at=at(d["depleted_at"]),
                                       jobs_queued=d["jobs_queued"])
    return events.webhook_test(org_id=SEED_ORG, message=d["message"], timestamp=at(d["timestamp"]))
