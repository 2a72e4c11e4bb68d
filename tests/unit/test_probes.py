"""Health probes and logging as Kubernetes sees them, without a worker: the probe server and the log format.

A real `deliverer run` process answering its probes and exporting metrics is in tests/system/test_probes.py.
"""

from deliverer.ops import probes
from tests.support.probes import http_get


def test_liveness_follows_the_heartbeat_not_readiness() -> None:
    """/livez fails only when the heartbeat is stale; /readyz follows the worker's readiness."""
    heartbeat = probes.Heartbeat()
    ready = {"value": False}
    server = probes.serve(0, heartbeat=heartbeat, ready=lambda: ready["value"], host="127.0.0.1")
    port = server.server_address[1]
    try:
        assert http_get(port, "/livez")[0] == 200
        assert http_get(port, "/readyz") == (
            503, "not ready: cannot claim work (database unreachable or not yet polled)\n")
        ready["value"] = True
        assert http_get(port, "/readyz")[0] == 200
        heartbeat.last -= probes.STALE_AFTER + 1
        status, body = http_get(port, "/livez")
        assert status == 503 and "event loop stalled" in body
        assert http_get(port, "/nope")[0] == 404
    finally:
        server.shutdown()


def test_logged_tracebacks_carry_no_locals_or_secrets(capsys: object) -> None:
    """A logged exception shows no local variables and no secret, in JSON and in the console format."""
    import structlog

    from deliverer.ops import logsetup as logconfig

    for fmt in ("json", "console"):
        logconfig.configure("info", fmt)
        secret = "whsec_c2VjcmV0LXRoYXQtbXVzdC1ub3QtbGVhaw=="  # a local: tracebacks must not show it
        try:
            raise ValueError("boom")
        except ValueError:
            structlog.get_logger("test").exception("failed", authorization="Bearer sk_live_abc", note=f"key {secret}")
        err = capsys.readouterr().err  # type: ignore[attr-defined]
        assert "boom" in err and "whsec_" not in err and "sk_live_abc" not in err, err
