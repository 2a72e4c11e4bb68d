"""The ``deliverer`` command.

Every setting comes from the environment (see deliverer.config) and can be
overridden by the flag of the same name, e.g. DELIVERER_HTTP_TIMEOUT and
--http-timeout.
"""

import argparse
import asyncio
import gc
import getpass
import json
import os
import signal
import sys
import uuid
from collections.abc import Coroutine, Sequence
from dataclasses import fields
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import structlog

from deliverer import settings as config
from deliverer.delivery import backlog
from deliverer.history import logs as history
from deliverer.history import projection
from deliverer.ops import logsetup as logconfig
from deliverer.ops import probes
from deliverer.registry import apikeys, endpoints
from deliverer.registry.queries import QUERIES as REGISTRY_SQL
from deliverer.storage import connections, schema
from outbox.ids import delivery_public_id, event_public_id, parse_delivery_id


def _setting_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("settings (each defaults to its environment variable)")
    for f in fields(config.Settings):
        flag = "--" + f.name.replace("_", "-")
        if f.name == "allow_insecure_urls":
            group.add_argument(flag, action="store_const", const="1", default=None,
                               help=f"accept http:// and loopback URLs, for development ({config.env_name(f.name)})")
        else:
            group.add_argument(flag, metavar=f.name.upper(), default=None, help=config.env_name(f.name))


def _require_sealing_keys() -> None:
    """run and api unseal endpoint secrets; without the keys they could not sign anything."""
    from deliverer.security import sealing

    try:
        sealing.seal("startup check")
    except sealing.SealingError as exc:
        raise config.ConfigError(str(exc)) from None


def _settings(args: argparse.Namespace) -> config.Settings:
    overrides = {
        f.name: config.convert(f.name, getattr(args, f.name))
        for f in fields(config.Settings) if getattr(args, f.name, None) is not None
    }
    settings = config.from_env(**overrides)
    if not settings.database_url:
        raise config.ConfigError("no database: set DATABASE_URL or pass --database-url postgresql://...")
    return settings


CLI_APPLICATION_NAME = "deliverer-cli"


def _connect(settings: config.Settings) -> psycopg.Connection:
    try:
        return connections.connect(settings, CLI_APPLICATION_NAME)
    except psycopg.OperationalError as exc:
        raise config.ConfigError(f"cannot connect to the database: {str(exc).strip()}") from None


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(value: Any) -> str:
        if value is None:
            return "-"
        if isinstance(value, datetime):
            return value.strftime("%H:%M:%S.%f")[:-3]
        if isinstance(value, float):
            return f"{value:.1f}"
        return str(value)

    text = [[cell(v) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in text]) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in text]
    return "\n".join(lines)


def _print_endpoints(items: list[endpoints.Endpoint], as_json: bool) -> None:
    if as_json:
        print(json.dumps([e.as_json() for e in items], indent=2))
        return
    print(format_table(
        ["id", "org", "url", "events", "enabled"],
        [[e.id, e.org_id, e.url, ",".join(e.event_types or ["*"]), e.enabled] for e in items],
    ))


def cmd_migrate(args: argparse.Namespace) -> int:
    settings = _settings(args)
    with _connect(settings) as conn:
        schema.migrate(conn)
    print("schema is up to date")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from deliverer.delivery.worker import Worker
    from deliverer.storage import partitions

    settings = _settings(args)
    _require_sealing_keys()

    async def main() -> None:
        stop, force = asyncio.Event(), asyncio.Event()

        def on_signal() -> None:
            (force if stop.is_set() else stop).set()

        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal)
        heartbeat = probes.Heartbeat()
        # Everything loaded so far lives as long as the process: frozen, the garbage
        # collector stops walking it on every full collection, a pause of several ms
        # at a random delivery.
        gc.collect()
        gc.freeze()
        async with Worker(settings) as worker:
            server = probes.serve(_metrics_port(args), heartbeat=heartbeat, ready=lambda: worker.ready)
            structlog.get_logger("deliverer.cli").info("probes listening", port=server.server_address[1])
            background = [asyncio.create_task(heartbeat.run()),
                          asyncio.create_task(backlog.watch(settings)),
                          asyncio.create_task(partitions.maintain(settings))]
            try:
                await worker.run(stop, force)
            finally:
                for task in background:
                    task.cancel()
                server.shutdown()

    run_event_loop(main())
    return 0


def run_event_loop(main: Coroutine[Any, Any, None]) -> None:
    """Run ``main`` on uvloop where it is installed (Linux, macOS): it halves the event loop's
    share of a worker's CPU. Elsewhere, on asyncio's own loop."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
        return
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main)


def cmd_endpoints_add(args: argparse.Namespace) -> int:
    settings = _settings(args)
    events = args.events.split(",") if args.events else None
    with _connect(settings) as conn:
        endpoint = endpoints.add(
            conn, org_id=args.org, url=args.url, event_types=events, secret=args.secret,
            description=args.description or "", allow_insecure=settings.allow_insecure_urls,
            allowed=settings.networks,
        )
    if args.json:
        print(json.dumps(endpoint.as_json(), indent=2))
    else:
        print(f"endpoint {endpoint.id} registered for {endpoint.org_id}: {endpoint.url}")
        print(f"events: {','.join(endpoint.event_types or ['*'])}")
        print(f"secret: {endpoint.secret}")
        print("Copy the secret now: it is not shown again.")
    return 0


def cmd_endpoints_list(args: argparse.Namespace) -> int:
    with _connect(_settings(args)) as conn:
        _print_endpoints(endpoints.list_all(conn, args.org), args.json)
    return 0


def cmd_endpoints_enable(args: argparse.Namespace, enabled: bool) -> int:
    with _connect(_settings(args)) as conn:
        _print_endpoints([endpoints.set_enabled(conn, args.endpoint_id, enabled)], args.json)
    return 0


def cmd_rebuild(args: argparse.Namespace) -> int:
    with _connect(_settings(args)) as conn:
        if args.check:
            differences = projection.diff(conn)
            for d in differences:
                print(d.side, delivery_public_id(d.delivery_id), *d[2:])
            print(f"{len(differences)} rows differ" if differences else "delivery_queue matches the log")
            return 1 if differences else 0
        count = projection.rebuild(conn)
    print(f"delivery_queue rebuilt from the log: {count} open deliveries")
    return 0


def cmd_retention(args: argparse.Namespace) -> int:
    from deliverer.storage import partitions

    try:
        older_than = partitions.parse_duration(args.older_than)
    except ValueError as exc:
        raise config.ConfigError(f"--older-than: {exc}") from None
    if older_than < partitions.MIN_OLDER_THAN and not args.force:
        raise config.ConfigError(
            f"--older-than {args.older_than} is less than a day: deliveries retry for over an hour and replays "
            "need their history; pass --force to drop that recent data anyway")
    with _connect(_settings(args)) as conn:
        report = partitions.retain(conn, older_than, dry_run=args.dry_run)
    print("\n".join(report.lines()))
    return 0


def delivery_rows(conn: psycopg.Connection, org_id: str | None, limit: int) -> list[list[Any]]:
    return [[delivery_public_id(d.delivery_id), event_public_id(d.event_id), d.event_type, d.endpoint_id, d.url,
             d.state, d.series, d.attempt, d.due_at, d.updated_at]
            for d in history.delivery_summaries(conn, org_id, limit)]


def attempt_rows(conn: psycopg.Connection, org_id: str | None) -> list[list[Any]]:
    return [[a.at, a.event_type, delivery_public_id(a.delivery_id), a.attempt, a.kind, a.outcome, a.http_status,
             a.duration_ms, a.error_message] for a in history.attempt_history(conn, org_id)]


DELIVERY_HEADERS = ["delivery", "event", "type", "endpoint", "url", "state", "series", "attempts", "due",
                    "updated"]
ATTEMPT_HEADERS = ["time", "type", "delivery", "attempt", "kind", "outcome", "status", "ms", "error"]


def cmd_deliveries(args: argparse.Namespace) -> int:
    with _connect(_settings(args)) as conn:
        rows = delivery_rows(conn, args.org, args.limit)
    if args.json:
        print(json.dumps([dict(zip(DELIVERY_HEADERS, r, strict=True)) for r in rows], default=str, indent=2))
    else:
        print(format_table(DELIVERY_HEADERS, rows))
    return 0


def _actor() -> str:
    return f"cli:{getpass.getuser()}"


async def _aconnect(settings: config.Settings) -> psycopg.AsyncConnection[Any]:
    try:
        return await connections.aconnect(settings, CLI_APPLICATION_NAME)
    except psycopg.OperationalError as exc:
        raise config.ConfigError(f"cannot connect to the database: {str(exc).strip()}") from None


def _timestamp(value: str, flag: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise config.ConfigError(f"{flag} must be an ISO-8601 time like 2024-11-23T10:00:00Z, got {value!r}") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def cmd_api(args: argparse.Namespace) -> int:
    from aiohttp import web

    from deliverer.api.app import HEALTH, create_app

    settings = _settings(args)
    _require_sealing_keys()
    host = args.host or os.environ.get("DELIVERER_API_HOST", "0.0.0.0")
    port = int(args.port or os.environ.get("DELIVERER_API_PORT", "8080"))
    app = create_app(settings)
    health = app[HEALTH]
    server = probes.serve(_metrics_port(args), heartbeat=health.heartbeat, ready=lambda: health.ready)
    try:
        web.run_app(app, host=host, port=port, access_log=None, print=None)
    finally:
        server.shutdown()
    return 0


def _metrics_port(args: argparse.Namespace) -> int:
    raw = args.metrics_port or os.environ.get("DELIVERER_METRICS_PORT", "9100")
    if not raw.isdigit():
        raise config.ConfigError(f"DELIVERER_METRICS_PORT must be a port number, got {raw!r}")
    return int(raw)


def cmd_keys_create(args: argparse.Namespace) -> int:
    with _connect(_settings(args)) as conn:
        try:
            created = apikeys.create(conn, args.org, test=args.test)
        except ValueError as exc:
            raise config.ConfigError(str(exc)) from None
    if args.json:
        print(json.dumps({"id": created.id, "org_id": created.org_id, "key": created.key}, indent=2))
    else:
        print(f"API key {created.id} for {created.org_id}: {created.key}")
        print("Copy it now: only its hash is stored, it cannot be shown again.")
    return 0


def cmd_keys_generate_encryption_key(args: argparse.Namespace) -> int:
    from deliverer.security import sealing

    print(sealing.new_key())
    return 0


def cmd_reseal(args: argparse.Namespace) -> int:
    """Seal every endpoint secret with the first key of DELIVERER_SECRET_KEYS (after a key rotation)."""
    from deliverer.security import sealing

    with _connect(_settings(args)) as conn:
        try:
            count = endpoints.reseal_secrets(conn)
        except sealing.SealingError as exc:
            raise config.ConfigError(str(exc)) from None
    print(f"re-sealed the secrets of {count} endpoints with the first key of {sealing.ENV}")
    return 0


LOG_HEADERS = ["time", "event type", "event", "delivery", "attempt", "outcome", "status", "ms", "error"]


def cmd_logs(args: argparse.Namespace) -> int:
    settings = _settings(args)
    since = _timestamp(args.since, "--since") if args.since else None

    async def fetch() -> list[dict[str, Any]]:
        async with await _aconnect(settings) as conn:
            items, _ = await history.attempts(conn, org_id=args.org, endpoint_id=args.endpoint,
                                              event_type=args.event_type, since=since, limit=args.limit)
        return items

    items = asyncio.run(fetch())
    if args.json:
        print(json.dumps(items, indent=2))
    else:
        print(format_table(LOG_HEADERS, [[
            i["timestamp"], i["event_type"], i["event_id"], i["delivery_id"], i["attempt"], i["outcome"],
            i["http_status"], i["response_time_ms"], i["error_message"]] for i in items]))
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    from deliverer.history import replay

    settings = _settings(args)
    try:
        delivery_id = parse_delivery_id(args.delivery_id)
    except ValueError as exc:
        raise config.ConfigError(str(exc)) from None

    async def run() -> tuple[list[Any], dict[str, Any] | None]:
        async with await _aconnect(settings) as conn:
            done = await replay.replay(conn, [delivery_id], org_id=None, actor=_actor())
            return done, await history.delivery(conn, delivery_id, None)

    done, found = asyncio.run(run())
    if found is None:
        raise config.ConfigError(f"no delivery {args.delivery_id}")
    if not done:
        print(f"{args.delivery_id} is {found['state']}; only delivered or failed deliveries can be replayed")
        return 1
    print(f"{args.delivery_id}: attempt series {done[0].series} scheduled")
    return 0


def cmd_recover(args: argparse.Namespace) -> int:
    from deliverer.history import replay

    settings = _settings(args)
    since = _timestamp(args.since, "--since")
    until = _timestamp(args.until, "--until") if args.until else datetime.now(UTC) + timedelta(seconds=1)

    async def run() -> list[uuid.UUID]:
        async with await _aconnect(settings) as conn:
            if await endpoints.get(conn, args.endpoint, None) is None:
                raise config.ConfigError(f"no endpoint {args.endpoint!r}; `deliverer endpoints list` shows the ids")
            return await replay.recover(conn, args.endpoint, org_id=None, since=since, until=until,
                                        actor=_actor(), dry_run=args.dry_run)

    ids = asyncio.run(run())
    verb = "would replay" if args.dry_run else "replayed"
    print(f"{verb} {len(ids)} failed deliveries of {args.endpoint}")
    for delivery_id in ids:
        print(f"  {delivery_public_id(delivery_id)}")
    return 0


def cmd_test_webhook(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from deliverer.delivery.worker import Worker, default_worker_id
    from deliverer.history import ping

    settings = _settings(args)

    async def run() -> dict[str, Any]:
        async with await _aconnect(settings) as conn:
            cur = await conn.execute(REGISTRY_SQL["find_endpoint_by_url"], {"org_id": args.org, "url": args.url})
            endpoint = await cur.fetchone()
            if endpoint is None:
                raise config.ConfigError(f"{args.url} is not a registered endpoint; register it first with "
                                         "`deliverer endpoints add`")
            async with Worker(replace(settings, worker_id=f"cli-{default_worker_id()}")) as sender:
                try:
                    return await ping.send(conn, sender, endpoint)
                except ping.EndpointDisabled as exc:
                    raise config.ConfigError(str(exc)) from None

    outcome = asyncio.run(run())
    if args.json:
        print(json.dumps(outcome, indent=2))
    elif outcome["delivered"]:
        print(f"delivered: HTTP {outcome['http_status']} in {outcome['response_time_ms']} ms "
              f"({outcome['event_id']})")
    else:
        print(f"not delivered: {outcome['error_message']} after {outcome['response_time_ms']} ms "
              f"({outcome['event_id']})")
    return 0 if outcome["delivered"] else 1


def cmd_demo(args: argparse.Namespace) -> int:
    from deliverer.dev import demo

    return asyncio.run(demo.main(args.database_url or config.from_env().database_url or None))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="deliverer", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help_text: str, func: Any) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.set_defaults(func=func)
        _setting_flags(sub)
        return sub

    command("migrate", "apply schema.sql (idempotent)", cmd_migrate)
    run = command("run", "deliver webhooks until SIGTERM", cmd_run)
    run.add_argument("--metrics-port", help="port for /metrics, /livez and /readyz (DELIVERER_METRICS_PORT, "
                     "default 9100; 0 picks a free one)")

    eps = commands.add_parser("endpoints", help="register and manage webhook endpoints")
    ep_commands = eps.add_subparsers(dest="endpoints_command", required=True, metavar="ACTION")
    for name, help_text, func in (
        ("add", "register an endpoint; prints its id and secret", cmd_endpoints_add),
        ("list", "list endpoints", cmd_endpoints_list),
        ("disable", "stop delivering to an endpoint", lambda a: cmd_endpoints_enable(a, False)),
        ("enable", "resume delivering to an endpoint", lambda a: cmd_endpoints_enable(a, True)),
    ):
        sub = ep_commands.add_parser(name, help=help_text, description=help_text)
        sub.set_defaults(func=func)
        sub.add_argument("--json", action="store_true", help="print JSON for scripts")
        _setting_flags(sub)
        if name == "add":
            sub.add_argument("--org", required=True, help="the org whose events go to this endpoint")
            sub.add_argument("--url", required=True, help="https:// URL that accepts POST")
            sub.add_argument("--events", help="comma-separated event types (default: all)")
            sub.add_argument("--secret", help="import an existing signing secret instead of generating one")
            sub.add_argument("--description", help="free text shown in listings")
        elif name == "list":
            sub.add_argument("--org", help="only this org's endpoints")
        else:
            sub.add_argument("endpoint_id")

    rebuild = command("rebuild-projections", "recompute delivery_queue from the delivery log", cmd_rebuild)
    rebuild.add_argument("--check", action="store_true",
                         help="only compare the live queue with the log; exit 1 if they differ")
    retention = command("retention", "drop partitions of events and delivery log older than a cutoff, create "
                        "upcoming ones, forget old dedupe keys", cmd_retention)
    retention.add_argument("--older-than", required=True, metavar="DURATION",
                           help="drop data older than this: 30d, 12h or 90m")
    retention.add_argument("--dry-run", action="store_true", help="only print what would be done")
    retention.add_argument("--force", action="store_true", help="allow --older-than under a day")
    deliveries = command("deliveries", "list deliveries and their state, derived from the log", cmd_deliveries)
    deliveries.add_argument("--org", help="only this org's deliveries")
    deliveries.add_argument("--limit", type=int, default=50)
    deliveries.add_argument("--json", action="store_true")
    command("demo", "run the end-to-end demo (embedded PostgreSQL unless DATABASE_URL is set)", cmd_demo)

    api = command("api", "serve the webhooks HTTP API", cmd_api)
    api.add_argument("--host", help="address to listen on (DELIVERER_API_HOST, default 0.0.0.0)")
    api.add_argument("--port", help="port to listen on (DELIVERER_API_PORT, default 8080)")
    api.add_argument("--metrics-port", help="port for /metrics, /livez and /readyz (DELIVERER_METRICS_PORT, "
                     "default 9100)")

    keys = commands.add_parser("keys", help="API keys")
    key_commands = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    create = key_commands.add_parser("create", help="create an API key for an org; printed once",
                                     description="create an API key for an org; printed once")
    create.set_defaults(func=cmd_keys_create)
    create.add_argument("--org", required=True)
    create.add_argument("--test", action="store_true", help="an sk_test_ key instead of sk_live_")
    create.add_argument("--json", action="store_true")
    _setting_flags(create)
    generate = key_commands.add_parser(
        "generate-encryption-key", help="print a new key for DELIVERER_SECRET_KEYS",
        description="print a new Fernet key for DELIVERER_SECRET_KEYS (endpoint secrets at rest)")
    generate.set_defaults(func=cmd_keys_generate_encryption_key, log_level=None, log_format=None)
    command("reseal", "re-seal every endpoint secret with the first key of DELIVERER_SECRET_KEYS", cmd_reseal)

    logs = command("logs", "attempts, newest first, from the delivery log", cmd_logs)
    logs.add_argument("--endpoint", help="only this endpoint")
    logs.add_argument("--org", help="only this org")
    logs.add_argument("--event-type", help="only this event type")
    logs.add_argument("--since", help="only attempts recorded at or after this ISO-8601 time")
    logs.add_argument("--limit", type=int, default=50)
    logs.add_argument("--json", action="store_true")

    replay_cmd = command("replay", "start a new attempt series for a delivered or failed delivery", cmd_replay)
    replay_cmd.add_argument("delivery_id", help="dlv_…")

    recover = command("recover", "replay an endpoint's failed deliveries of events created since a time",
                      cmd_recover)
    recover.add_argument("--endpoint", required=True)
    recover.add_argument("--since", required=True, help="ISO-8601 time")
    recover.add_argument("--until", help="ISO-8601 time (default: now)")
    recover.add_argument("--dry-run", action="store_true", help="only count what would be replayed")

    test_webhook = command("test-webhook", "send the webhook.test event to a registered endpoint now",
                           cmd_test_webhook)
    test_webhook.add_argument("url")
    test_webhook.add_argument("--org", help="the org, when several registered the same URL")
    test_webhook.add_argument("--json", action="store_true")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        base = config.from_env()
        logconfig.configure(args.log_level or base.log_level, args.log_format or base.log_format)
        return int(args.func(args))
    except (config.ConfigError, endpoints.EndpointError) as exc:
        print(f"deliverer: error: {exc}", file=sys.stderr)
        return 2
    except (psycopg.errors.UndefinedTable, psycopg.errors.UndefinedColumn) as exc:
        print(f"deliverer: error: the database schema is older than this deliverer ({str(exc).splitlines()[0]}); "
              "run `deliverer migrate`", file=sys.stderr)
        return 2
    except psycopg.Error as exc:
        print(f"deliverer: database error: {str(exc).strip()}", file=sys.stderr)
        return 2
