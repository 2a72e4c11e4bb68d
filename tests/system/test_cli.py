"""The deliverer command as an operator runs it."""

import asyncio
import json
from pathlib import Path

import psycopg

from deliverer.security import sealing
from tests.support import failed_deliveries
from tests.support.certificates import CA
from tests.support.processes import deliverer


def test_migrate_twice(dsn: str) -> None:
    """migrate reports success and can be run again."""
    for _ in range(2):
        result = deliverer(dsn, "migrate")
        assert result.returncode == 0, result.stderr
        assert "schema is up to date" in result.stdout


def test_endpoints_add_prints_id_and_secret_as_json(dsn: str, db: psycopg.Connection) -> None:
    """--json prints the endpoint with its generated whsec_ secret, which is what gets stored."""
    result = deliverer(dsn, "endpoints", "add", "--org", "org_a", "--url", "https://example.com/hook",
                       "--events", "job.completed,job.failed", "--json")
    assert result.returncode == 0, result.stderr
    created = json.loads(result.stdout)
    assert created["id"].startswith("ep_")
    assert created["secret"].startswith("whsec_")
    assert created["events"] == ["job.completed", "job.failed"]
    stored = db.execute("SELECT secret FROM webhook_endpoint WHERE id = %s", [created["id"]]).fetchone()[0]
    assert created["secret"] not in stored and sealing.unseal(stored) == created["secret"]


def test_endpoints_add_imports_an_existing_secret(dsn: str, db: psycopg.Connection) -> None:
    """--secret keeps a customer's existing secret instead of generating one."""
    result = deliverer(dsn, "endpoints", "add", "--org", "org_a", "--url", "https://example.com/hook",
                       "--secret", "my-old-provider-secret-123", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["secret"] == "my-old-provider-secret-123"


def test_plain_http_is_refused_with_the_way_to_allow_it(dsn: str) -> None:
    """Without the development setting an http:// URL is refused; the message names the setting."""
    result = deliverer(dsn, "endpoints", "add", "--org", "org_a", "--url", "http://example.com/hook")
    assert result.returncode == 2
    assert "DELIVERER_ALLOW_INSECURE_URLS=1" in result.stderr
    allowed = deliverer(dsn, "endpoints", "add", "--org", "org_a", "--url", "http://127.0.0.1:9/hook",
                        DELIVERER_ALLOW_INSECURE_URLS="1")
    assert allowed.returncode == 0, allowed.stderr
    assert "Copy the secret now" in allowed.stdout


def test_list_disable_enable(dsn: str) -> None:
    """An endpoint can be listed, disabled and enabled again."""
    created = json.loads(deliverer(dsn, "endpoints", "add", "--org", "org_a", "--url",
                                   "https://example.com/hook", "--json").stdout)
    disabled = json.loads(deliverer(dsn, "endpoints", "disable", created["id"], "--json").stdout)
    assert disabled[0]["enabled"] is False
    listed = json.loads(deliverer(dsn, "endpoints", "list", "--org", "org_a", "--json").stdout)
    assert [(e["id"], e["enabled"]) for e in listed] == [(created["id"], False)]
    assert "secret" not in listed[0]
    enabled = deliverer(dsn, "endpoints", "enable", created["id"])
    assert enabled.returncode == 0 and "True" in enabled.stdout
    missing = deliverer(dsn, "endpoints", "enable", "ep_nope")
    assert missing.returncode == 2 and "no endpoint 'ep_nope'" in missing.stderr


def test_endpoint_limits_are_set_on_add_changed_by_update_and_listed(dsn: str, db: psycopg.Connection) -> None:
    """add takes both limits; update changes only the flags given (default/none put a limit back on the
    deployment's default); list shows a default as the value that applies."""
    created = json.loads(deliverer(dsn, "endpoints", "add", "--org", "org_a", "--url", "https://example.com/hook",
                                   "--max-in-flight", "5", "--rate-limit", "0.5", "--json").stdout)
    assert (created["max_in_flight"], created["rate_limit"]) == (5, 0.5)
    updated = deliverer(dsn, "endpoints", "update", created["id"], "--rate-limit", "20", "--description", "ops",
                        "--json")
    assert updated.returncode == 0, updated.stderr
    assert (json.loads(updated.stdout)["max_in_flight"], json.loads(updated.stdout)["rate_limit"]) == (5, 20.0)
    assert db.execute("SELECT max_in_flight, rate_limit, description FROM webhook_endpoint").fetchone() == (
        5, 20.0, "ops")
    reset = deliverer(dsn, "endpoints", "update", created["id"], "--max-in-flight", "default", "--rate-limit", "none",
                      "--events", "job.failed", "--url", "https://example.com/new")
    assert reset.returncode == 0, reset.stderr
    assert db.execute("SELECT max_in_flight, rate_limit, event_types, url FROM webhook_endpoint").fetchone() == (
        None, None, ["job.failed"], "https://example.com/new")
    deliverer(dsn, "endpoints", "add", "--org", "org_a", "--url", "https://example.com/two", "--max-in-flight", "7")
    table = deliverer(dsn, "endpoints", "list", DELIVERER_ENDPOINT_RATE_LIMIT="100").stdout.splitlines()
    assert table[0].split()[-8:] == ["max", "in", "flight", "rate", "limit/s", "ordering", "headers", "auth"]
    assert table[2].split()[-5:] == ["50", "(default)", "100", "(default)", "none"]
    assert table[3].split()[-4:] == ["7", "100", "(default)", "none"]
    assert deliverer(dsn, "endpoints", "list").stdout.splitlines()[3].split()[-4:] == [
        "7", "none", "(default)", "none"]


def test_ordering_is_set_on_add_changed_by_update_and_refused_when_unknown(dsn: str, db: psycopg.Connection) -> None:
    added = deliverer(dsn, "endpoints", "add", "--org", "org_a", "--url", "https://example.com/hook",
                      "--ordering", "fifo")
    assert added.returncode == 0 and "ordering: fifo (one at a time per ordering key" in added.stdout
    [endpoint] = json.loads(deliverer(dsn, "endpoints", "list", "--json").stdout)
    assert endpoint["ordering"] == "fifo"
    assert deliverer(dsn, "endpoints", "update", endpoint["id"], "--ordering", "none").returncode == 0
    assert db.execute("SELECT ordering FROM webhook_endpoint").fetchone() == ("none",)
    refused = deliverer(dsn, "endpoints", "update", endpoint["id"], "--ordering", "lifo")
    assert (refused.returncode, refused.stdout) == (2, "")
    assert refused.stderr == ('deliverer: error: ordering must be "none" (deliveries in parallel, as they come) or '
                              '"fifo" (one at a time per ordering key, in publish order), got \'lifo\'\n')
    assert db.execute("SELECT ordering FROM webhook_endpoint").fetchone() == ("none",)


def test_bad_endpoint_limits_are_one_line_naming_what_is_allowed(dsn: str, db: psycopg.Connection) -> None:
    """The registry's message, the API's too, on stderr with status 2; nothing is stored or changed."""
    refused = deliverer(dsn, "endpoints", "add", "--org", "org_a", "--url", "https://example.com/hook",
                        "--max-in-flight", "1001")
    assert (refused.returncode, refused.stdout) == (2, "")
    assert refused.stderr == ("deliverer: error: max_in_flight must be a whole number from 1 to 1000 (requests open "
                              "at once), or null for the deployment's default\n")
    created = json.loads(deliverer(dsn, "endpoints", "add", "--org", "org_a", "--url", "https://example.com/hook",
                                   "--json").stdout)
    for value in ("0", "fast", "-2", "inf"):
        bad = deliverer(dsn, "endpoints", "update", created["id"], "--rate-limit", value)
        assert bad.returncode == 2 and bad.stderr == (
            "deliverer: error: rate_limit must be a number of deliveries per second above 0 and at most 10000, "
            "or null for the deployment's default\n"), value
    nothing = deliverer(dsn, "endpoints", "update", created["id"])
    assert nothing.returncode == 2 and "nothing to change" in nothing.stderr
    missing = deliverer(dsn, "endpoints", "update", "ep_nope", "--max-in-flight", "3")
    assert missing.returncode == 2 and "no endpoint 'ep_nope'" in missing.stderr
    assert db.execute("SELECT count(*), max(max_in_flight), max(rate_limit) FROM webhook_endpoint").fetchone() == (
        1, None, None)


def test_endpoint_headers_and_auth_are_set_by_flags_and_never_printed_back(
        dsn: str, db: psycopg.Connection, tmp_path: Path) -> None:
    """--header (repeatable) and the auth flags on add and update; a token given as - is read from stdin;
    list and JSON show the header names and the auth type only; a reserved header and a mismatched client key
    are one line on stderr with status 2, and nothing changes."""
    created = deliverer(dsn, "endpoints", "add", "--org", "org_a", "--url", "https://example.com/hook",
                        "--header", "X-Tenant: acme", "--header", "X-Api-Key:k-123", "--bearer-token", "-", "--json",
                        stdin="t0k3n-from-stdin\n")
    assert created.returncode == 0, created.stderr
    endpoint = json.loads(created.stdout)
    assert (endpoint["header_names"], endpoint["auth"]) == (["X-Api-Key", "X-Tenant"], {"type": "bearer"})
    listed = deliverer(dsn, "endpoints", "list")
    assert "X-Api-Key,X-Tenant" in listed.stdout and "bearer" in listed.stdout
    stored_text = str(db.execute("SELECT headers, auth FROM webhook_endpoint").fetchone())
    for text in (created.stdout, listed.stdout, stored_text):
        assert "acme" not in text and "k-123" not in text and "t0k3n-from-stdin" not in text
    stored = db.execute("SELECT auth FROM webhook_endpoint").fetchone()
    assert stored is not None and json.loads(sealing.unseal(stored[0]))["token"] == "t0k3n-from-stdin"

    ca = CA()
    one, other = ca.issue("one", server=False), ca.issue("other", server=False)
    cert, _ = one.write(tmp_path, "one")
    _, wrong_key = other.write(tmp_path, "other")
    refused = deliverer(dsn, "endpoints", "update", endpoint["id"], "--client-cert", str(cert), "--client-key",
                        str(wrong_key))
    assert (refused.returncode, refused.stderr) == (2, "deliverer: error: auth of type mtls refused: the key does "
                                                       "not belong to the certificate (their public keys differ)\n")
    reserved = deliverer(dsn, "endpoints", "update", endpoint["id"], "--header", "X-DocExtract-Signature: forged")
    assert reserved.returncode == 2 and "header 'X-DocExtract-Signature' is reserved" in reserved.stderr
    cert, key = one.write(tmp_path, "one")
    mtls = deliverer(dsn, "endpoints", "update", endpoint["id"], "--client-cert", str(cert), "--client-key", str(key),
                     "--no-headers", "--json")
    assert mtls.returncode == 0, mtls.stderr
    assert (json.loads(mtls.stdout)["header_names"], json.loads(mtls.stdout)["auth"]) == ([], {"type": "mtls"})
    assert "PRIVATE KEY" not in mtls.stdout
    removed = deliverer(dsn, "endpoints", "update", endpoint["id"], "--no-auth", "--json")
    assert json.loads(removed.stdout)["auth"] is None
    assert db.execute("SELECT headers, auth_type, auth FROM webhook_endpoint").fetchone() == (None, None, None)


def test_rebuild_projections_check_and_repair(dsn: str, db: psycopg.Connection) -> None:
    """--check exits 1 when the queue drifted from the log; rebuild-projections repairs it."""
    assert deliverer(dsn, "rebuild-projections", "--check").returncode == 0
    db.execute("INSERT INTO delivery_queue VALUES (gen_random_uuid(), gen_random_uuid(), 'ep', 'org', 1, 0, now())")
    check = deliverer(dsn, "rebuild-projections", "--check")
    assert check.returncode == 1 and "1 rows differ" in check.stdout
    assert deliverer(dsn, "rebuild-projections").returncode == 0
    assert deliverer(dsn, "rebuild-projections", "--check").returncode == 0


def test_missing_database_url_is_a_clear_error() -> None:
    """Without DATABASE_URL the command says how to give one."""
    result = deliverer(None, "migrate")
    assert result.returncode == 2
    assert "set DATABASE_URL or pass --database-url" in result.stderr


def test_bad_setting_is_a_clear_error(dsn: str) -> None:
    """A malformed environment setting names the variable."""
    result = deliverer(dsn, "migrate", DELIVERER_HTTP_TIMEOUT="soon")
    assert result.returncode == 2
    assert "DELIVERER_HTTP_TIMEOUT must be a number" in result.stderr


def test_unreachable_database_is_a_clear_error() -> None:
    """A database that does not answer gives one line, not a traceback."""
    result = deliverer("postgresql://nobody@127.0.0.1:1/nothing", "migrate")
    assert result.returncode == 2
    assert "cannot connect to the database" in result.stderr
    assert "Traceback" not in result.stderr


def test_demo_runs_end_to_end(dsn: str) -> None:
    """`deliverer demo` against a given database delivers, verifies and exits 0 within a minute."""
    result = deliverer(dsn, "demo")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "events committed: 4, verified by the receiver: 4, bad signatures: 0" in result.stdout
    assert "matches the live queue: yes" in result.stdout


def _failed_delivery(dsn: str, db: psycopg.Connection) -> tuple[str, str]:
    """An endpoint on a closed port and one event whose single allowed attempt failed."""
    endpoint_id, [delivery_id] = asyncio.run(failed_deliveries(dsn, db, 1))
    return endpoint_id, delivery_id


def test_keys_create_prints_the_key_once(dsn: str, db: psycopg.Connection) -> None:
    """keys create prints an sk_live_ key; only its hash is stored."""
    result = deliverer(dsn, "keys", "create", "--org", "org_a", "--json")
    assert result.returncode == 0, result.stderr
    key = json.loads(result.stdout)["key"]
    assert key.startswith("sk_live_")
    assert db.execute("SELECT count(*) FROM api_key WHERE prefix = %s", [key[:12]]).fetchone() == (1,)
    dump = db.execute("SELECT row_to_json(k)::text FROM api_key k").fetchone()[0]
    assert key not in dump
    test_key = deliverer(dsn, "keys", "create", "--org", "org_a", "--test")
    assert "sk_test_" in test_key.stdout and "cannot be shown again" in test_key.stdout


def test_logs_replay_and_recover(dsn: str, db: psycopg.Connection) -> None:
    """logs lists the failed attempt; replay and recover schedule new series; --dry-run only counts."""
    endpoint_id, delivery_id = _failed_delivery(dsn, db)
    logs = json.loads(deliverer(dsn, "logs", "--endpoint", endpoint_id, "--json").stdout)
    assert [(a["delivery_id"], a["outcome"], a["error_class"]) for a in logs] == [
        (delivery_id, "failed", "connect_error")]
    table = deliverer(dsn, "logs", "--event-type", "webhook.test", "--since", "2024-01-01T00:00:00Z")
    assert delivery_id in table.stdout and "could not connect" in table.stdout

    dry = deliverer(dsn, "recover", "--endpoint", endpoint_id, "--since", "2024-01-01T00:00:00Z", "--dry-run")
    assert dry.returncode == 0 and "would replay 1 failed deliveries" in dry.stdout
    assert db.execute("SELECT count(*) FROM delivery_queue").fetchone() == (0,)

    replayed = deliverer(dsn, "replay", delivery_id)
    assert replayed.returncode == 0 and "attempt series 2 scheduled" in replayed.stdout
    busy = deliverer(dsn, "replay", delivery_id)
    assert busy.returncode == 1 and "is pending" in busy.stdout
    actor = db.execute("SELECT actor FROM delivery_log WHERE kind = 'replay_requested'").fetchone()[0]
    assert actor.startswith("cli:")
    recovered = deliverer(dsn, "recover", "--endpoint", endpoint_id, "--since", "2024-01-01T00:00:00Z")
    assert "replayed 0 failed deliveries" in recovered.stdout  # it is pending again, not failed
    missing = deliverer(dsn, "replay", "dlv_" + "0" * 32)
    assert missing.returncode == 2 and "no delivery" in missing.stderr


def test_test_webhook_reports_the_outcome(dsn: str, db: psycopg.Connection) -> None:
    """test-webhook sends webhook.test to a registered URL and says whether it arrived."""
    _failed_delivery(dsn, db)
    guarded = deliverer(dsn, "test-webhook", "http://127.0.0.1:9/hook")
    assert guarded.returncode == 1 and "not delivered: refused to connect" in guarded.stdout
    result = deliverer(dsn, "test-webhook", "http://127.0.0.1:9/hook", DELIVERER_ALLOW_INSECURE_URLS="1")
    assert result.returncode == 1
    assert "not delivered: could not connect" in result.stdout
    unknown = deliverer(dsn, "test-webhook", "https://nowhere.example/hook")
    assert unknown.returncode == 2 and "register it first" in unknown.stderr


def test_reseal_seals_legacy_secrets_and_moves_them_to_a_new_key(dsn: str, db: psycopg.Connection) -> None:
    """reseal seals secrets stored in the clear, and after a key rotation re-seals under the new first key."""
    from deliverer.security import sealing

    db.execute("INSERT INTO webhook_endpoint (id, org_id, url, secret) VALUES ('ep_1', 'org_a', 'https://e.x', "
               "'whsec_legacy')")
    old = deliverer(None, "keys", "generate-encryption-key").stdout.strip()
    new = deliverer(None, "keys", "generate-encryption-key").stdout.strip()
    assert old != new
    first = deliverer(dsn, "reseal", DELIVERER_SECRET_KEYS=old)
    assert first.returncode == 0 and "re-sealed the secrets of 1 endpoints" in first.stdout
    stored = db.execute("SELECT secret FROM webhook_endpoint").fetchone()[0]
    assert stored.startswith("fernet:") and sealing.unseal(stored, old) == "whsec_legacy"
    assert deliverer(dsn, "reseal", DELIVERER_SECRET_KEYS=f"{new},{old}").returncode == 0
    stored = db.execute("SELECT secret FROM webhook_endpoint").fetchone()[0]
    assert sealing.unseal(stored, new) == "whsec_legacy"
    missing = deliverer(dsn, "reseal", DELIVERER_SECRET_KEYS="")
    assert missing.returncode == 2 and "generate-encryption-key" in missing.stderr


def test_an_old_schema_is_reported_with_the_fix(dsn: str, db: psycopg.Connection) -> None:
    """A database without the newest columns gets an error that says to run migrate, not a traceback."""
    db.execute("ALTER TABLE webhook_endpoint DROP COLUMN previous_secret")
    result = deliverer(dsn, "reseal", DELIVERER_SECRET_KEYS=deliverer(None, "keys", "generate-encryption-key")
                       .stdout.strip())
    assert result.returncode == 2 and "run `deliverer migrate`" in result.stderr
    assert "Traceback" not in result.stderr


def test_run_and_api_refuse_to_start_without_sealing_keys(dsn: str) -> None:
    """Without DELIVERER_SECRET_KEYS the worker and the API stop at once and say how to make a key."""
    for command in ("run", "api"):
        result = deliverer(dsn, command, DELIVERER_SECRET_KEYS="")
        assert result.returncode == 2, result.stderr
        assert "generate-encryption-key" in result.stderr
