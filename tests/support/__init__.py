"""What the tests share, in one package: import from ``tests.support``, never from a conftest or a test module.

The fake clock, the recording receiver and ``eventually`` are the demo's and the
fault suite's too, so they live in ``deliverer.dev`` and are re-exported here.
The rest is for tests only: ``database`` (servers, databases, settings,
endpoints, counts; the fixtures in tests/conftest.py build on it),
``payloads`` and ``contract`` (the customer docs' examples), ``processes``
(real ``deliverer`` processes), ``probes``, ``api_client``, ``deploy``,
``schema``, ``partitions`` and ``paths``.
"""

from deliverer.dev.clock import FakeClock
from deliverer.dev.receiver import Received, Receiver, docs_verify, fail_first, hold_until, respond
from deliverer.dev.waiting import NeverHappened, aeventually, eventually
from tests.support.database import (
    add_endpoint,
    count,
    failed_deliveries,
    hanging_and_healthy,
    settings_for,
    worker_asleep,
)
from tests.support.payloads import SEED_EXAMPLES, depleted, job_completed, job_failed, low_balance, webhook_test

__all__ = [
    "SEED_EXAMPLES", "FakeClock", "NeverHappened", "Received", "Receiver", "add_endpoint", "aeventually", "count",
    "depleted", "docs_verify", "eventually", "fail_first", "failed_deliveries", "hanging_and_healthy", "hold_until",
    "job_completed", "job_failed", "low_balance", "respond", "settings_for", "webhook_test", "worker_asleep",
]
