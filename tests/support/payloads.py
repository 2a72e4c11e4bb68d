"""Event payloads: the customer docs' examples, with ids the catalog accepts."""

from typing import Any


def job_completed(org_id: str = "org_a", job_id: str = "job_abc123") -> dict[str, Any]:
    """The customer docs' job.completed example."""
    return {
        "id": job_id, "org_id": org_id, "extractor_id": "ext_def456", "status": "completed",
        "extracted_data": {"invoice_number": "INV-2024-001", "total_amount": 1250.50, "invoice_date": "2024-11-15"},
        "confidence": {"invoice_number": 0.98, "total_amount": 0.95, "invoice_date": 0.99},
        "processing_time_ms": 4532, "cost_credits": 2, "metadata": {"customer_id": "cust_123", "source": "email"},
        "created_at": "2024-11-23T10:00:00Z", "completed_at": "2024-11-23T10:00:05Z",
    }


def job_failed(org_id: str = "org_a", job_id: str = "job_abc123") -> dict[str, Any]:
    return {
        "id": job_id, "org_id": org_id, "extractor_id": "ext_def456", "status": "failed",
        "error_details": {"code": "document_unreadable", "message": "Document quality is too low to extract text",
                          "suggestion": "Please provide a higher quality scan or image"},
        "processing_time_ms": 1200, "cost_credits": 0, "metadata": {"customer_id": "cust_123"},
        "created_at": "2024-11-23T10:00:00Z", "failed_at": "2024-11-23T10:00:01Z",
    }


def low_balance(org_id: str = "org_a") -> dict[str, Any]:
    return {"org_id": org_id, "current_balance": 50, "threshold": 100, "percentage_remaining": 2.5,
            "estimated_jobs_remaining": 25, "timestamp": "2024-11-23T10:00:00Z"}


def depleted(org_id: str = "org_a") -> dict[str, Any]:
    return {"org_id": org_id, "depleted_at": "2024-11-23T10:00:00Z", "jobs_queued": 5}


def webhook_test() -> dict[str, Any]:
    return {"message": "This is a test webhook event", "timestamp": "2024-11-23T10:00:00Z"}


SEED_EXAMPLES = {
    "job.completed": job_completed,
    "job.failed": job_failed,
    "credits.low_balance": low_balance,
    "credits.depleted": depleted,
}
