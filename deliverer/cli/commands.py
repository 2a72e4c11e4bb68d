"""One function per ``deliverer`` command, each taking the parsed arguments and returning the exit status.

Settings come from ``_settings``: the environment, overridden by the flags of the same
name. Commands work through the package that owns the data (``registry``, ``history``,
``storage``) and print through ``output``; a refusal is raised as ``settings.ConfigError``
and ``main`` prints it. Imports that only one command needs (the worker, aiohttp,
the demo) are made inside it, so the others start quickly.
"""

import argparse
import asyncio
import errno
import gc
import getpass
import os
import signal
import sys
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import fields
from datetime import UTC, datetime, timedelta
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psycopg
import structlog

from deliverer import settings as config
from deliverer.cli import output
from deliverer.cli.terminal import progress_bars
from deliverer.delivery import backlog
from deliverer.history import logs as history
from deliverer.history import projection
from deliverer.ops import probes, tracing
from deliverer.registry import apikeys, endpoints
from deliverer.registry.errors import EndpointError
from deliverer.storage import connections, schema
from outbox.catalog import EVENT_TYPES, OPERATOR_EVENT_TYPES, OPERATOR_ORG
from outbox.ids import delivery_public_id, parse_delivery_id

CLI_APPLICATION_NAME = "deliverer-cli"


# What commands share ----------------------------------------------------------


def _settings(args: argparse.Namespace) -> config.Settings:
    overrides = {
        f.name: config.convert(f.name, getattr(args, f.name))
        for f in fields(config.Settings) if getattr(args, f.name, None) is not None
    }
    settings = config.from_env(**overrides)
    if not settings.database_url:
        raise config.ConfigError("no database: set DATABASE_URL or pass --database-url postgresql://...")
    return settings


def _require_sealing_keys() -> None:
    """run and api unseal endpoint secrets; without the keys they could not sign anything."""
    from deliverer.security import sealing

    try:
        sealing.seal("startup check")
    except sealing.SealingError as exc:
        raise config.ConfigError(str(exc)) from None


def _connect(settings: config.Settings) -> psycopg.Connection:
    try:
        return connections.connect(settings, CLI_APPLICATION_NAME)
    except psycopg.OperationalError as exc:
        raise config.ConfigError(f"cannot connect to the database: {str(exc).strip()}") from None


async def _aconnect(settings: config.Settings) -> psycopg.AsyncConnection[Any]:
    try:
        return await connections.aconnect(settings, CLI_APPLICATION_NAME)
    except psycopg.OperationalError as exc:
        raise config.ConfigError(f"cannot connect to the database: {str(exc).strip()}") from None


def _port(raw: str, setting: str) -> int:
    if not raw.isdigit() or int(raw) > 65535:
        raise config.ConfigError(f"{setting} must be a port number from 0 to 65535, got {raw!r}")
    return int(raw)


def _metrics_port(args: argparse.Namespace, default: int) -> int:
    return _port(args.metrics_port or os.environ.get("DELIVERER_METRICS_PORT", str(default)), "DELIVERER_METRICS_PORT")


_PORT_FLAGS = {"DELIVERER_METRICS_PORT": "--metrics-port", "DELIVERER_API_PORT": "--port"}
# What binding a port can fail with that the setting fixes; other errors are not about the port.
_BIND_ERRORS = {errno.EADDRINUSE, errno.EACCES, errno.EADDRNOTAVAIL}


def _cannot_listen(exc: OSError, port: int, setting: str) -> config.ConfigError:
    """A port the process cannot have, as one line naming the setting that moves it."""
    problem = "is in use" if exc.errno == errno.EADDRINUSE else f"cannot be used ({os.strerror(exc.errno or 0)})"
    return config.ConfigError(f"port {port} {problem}: set {setting} (or {_PORT_FLAGS[setting]}) to a free port")


def _serve_probes(port: int, heartbeat: probes.Heartbeat, ready: Callable[[], bool]) -> ThreadingHTTPServer:
    try:
        return probes.serve(port, heartbeat=heartbeat, ready=ready)
    except OSError as exc:
        if exc.errno not in _BIND_ERRORS:
            raise
        raise _cannot_listen(exc, port, "DELIVERER_METRICS_PORT") from None


def _actor() -> str:
    return f"cli:{getpass.getuser()}"


def _timestamp(value: str, flag: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise config.ConfigError(f"{flag} must be an ISO-8601 time like 2024-11-23T10:00:00Z, got {value!r}") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _export_traces(settings: config.Settings, service: str) -> None:
    """Start exporting spans if OTEL_TRACES_EXPORTER asks for it (``tracing.shutdown`` flushes them)."""
    try:
        tracing.configure(settings.traces_exporter, service)
    except (ModuleNotFoundError, ValueError) as exc:
        raise config.ConfigError(str(exc)) from None


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


# Running ----------------------------------------------------------------------


def cmd_migrate(args: argparse.Namespace) -> int:
    settings = _settings(args)
    with _connect(settings) as conn, progress_bars() as progress:
        decisions = schema.migrate(conn, progress=progress)
    if args.json:
        output.print_json({"schema": "up to date", "partitions": [vars(d) for d in decisions]})
    else:
        print("schema is up to date")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    settings = _settings(args)
    _require_sealing_keys()
    _export_traces(settings, "deliverer")
    try:
        run_event_loop(_deliver(settings, _metrics_port(args, probes.RUN_PORT)))
    finally:
        tracing.shutdown()
    return 0


def _stop_signals() -> tuple[asyncio.Event, asyncio.Event]:
    """(stop, force): the first SIGTERM or SIGINT asks to finish what is in flight, the second to hurry."""
    stop, force = asyncio.Event(), asyncio.Event()

    def on_signal() -> None:
        (force if stop.is_set() else stop).set()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    return stop, force


async def _deliver(settings: config.Settings, metrics_port: int) -> None:
    from deliverer.delivery.worker import Worker
    from deliverer.storage import partitions

    stop, force = _stop_signals()
    heartbeat = probes.Heartbeat()
    worker = Worker(settings)  # connects nothing until entered
    # The port first: a taken one stops the process before it claims anything.
    server = _serve_probes(metrics_port, heartbeat, lambda: worker.ready)
    structlog.get_logger("deliverer.cli").info("probes listening", port=server.server_address[1])
    # Everything loaded so far lives as long as the process: frozen, the garbage
    # collector stops walking it on every full collection, a pause of several ms
    # at a random delivery.
    gc.collect()
    gc.freeze()
    try:
        async with worker:
            background = [asyncio.create_task(heartbeat.run()),
                          asyncio.create_task(backlog.watch(settings)),
                          asyncio.create_task(partitions.maintain(settings))]
            try:
                await worker.run(stop, force)
            finally:
                for task in background:
                    task.cancel()
    finally:
        server.shutdown()


def cmd_api(args: argparse.Namespace) -> int:
    from aiohttp import web

    from deliverer.api.app import HEALTH, create_app

    settings = _settings(args)
    _require_sealing_keys()
    host = args.host or os.environ.get("DELIVERER_API_HOST", "0.0.0.0")
    port = _port(args.port or os.environ.get("DELIVERER_API_PORT", "8080"), "DELIVERER_API_PORT")
    metrics_port = _metrics_port(args, probes.API_PORT)
    app = create_app(settings)
    health = app[HEALTH]
    server = _serve_probes(metrics_port, health.heartbeat, lambda: health.ready)
    _export_traces(settings, "deliverer-api")  # test events are attempts too
    try:
        web.run_app(app, host=host, port=port, access_log=None, print=None)
    except OSError as exc:
        if exc.errno not in _BIND_ERRORS:
            raise
        raise _cannot_listen(exc, port, "DELIVERER_API_PORT") from None
    finally:
        server.shutdown()
        tracing.shutdown()
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from deliverer.dev import demo

    return asyncio.run(demo.main(args.database_url or config.from_env().database_url or None))


# Endpoints and keys -----------------------------------------------------------


_DEFAULT_WORDS = ("default", "none", "null")  # null: what the registry's message, shared with the API, says


def _limit(raw: str) -> Any:
    """A limit flag's value as the registry checks it: a number, None for the default, or the text itself,
    which the registry then refuses with the message the API gives."""
    if raw.strip().lower() in _DEFAULT_WORDS:
        return None
    for kind in (int, float):
        try:
            return kind(raw)
        except ValueError:
            pass
    return raw


def _limit_changes(args: argparse.Namespace) -> dict[str, Any]:
    """The limit flags given (a flag left out keeps the endpoint's limit)."""
    given = {"max_in_flight": args.limit_max_in_flight, "rate_limit": args.limit_rate_limit}
    return {name: _limit(raw) for name, raw in given.items() if raw is not None}


def _header_flags(raw: list[str]) -> dict[str, str]:
    headers: dict[str, str] = {}
    for line in raw:
        name, colon, value = line.partition(":")
        if not colon or not name.strip():
            raise EndpointError(f"--header {line!r} must be 'Name: value'", "headers")
        if name.strip() in headers:
            raise EndpointError(f"header {name.strip()!r} is given twice", "headers")
        headers[name.strip()] = value.strip()
    return headers


def _credential(raw: str) -> str:
    """A flag's credential, or the first line of stdin for - (so it is not on the command line)."""
    return sys.stdin.readline().rstrip("\r\n") if raw == "-" else raw


def _pem_file(path: str, flag: str) -> str:
    try:
        return Path(path).read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        raise config.ConfigError(f"{flag} {path}: cannot read it as a PEM file: {exc}") from None


def _auth_flags(args: argparse.Namespace) -> dict[str, str] | None:
    """The auth the flags give; None when they give none."""
    if (args.client_cert is None) != (args.client_key is None):
        raise config.ConfigError("mutual TLS needs both --client-cert and --client-key")
    if args.basic_auth is not None:
        username, _, password = _credential(args.basic_auth).partition(":")
        return {"type": "basic", "username": username, "password": password}
    if args.bearer_token is not None:
        return {"type": "bearer", "token": _credential(args.bearer_token)}
    if args.client_cert is not None:
        return {"type": "mtls", "certificate": _pem_file(args.client_cert, "--client-cert"),
                "key": _pem_file(args.client_key, "--client-key")}
    return None


def _option_changes(args: argparse.Namespace) -> dict[str, Any]:
    """The header and auth flags given, as update takes them (a flag left out keeps the endpoint's)."""
    changes: dict[str, Any] = {}
    if args.no_headers and args.headers:
        raise config.ConfigError("give --header or --no-headers, not both")
    if args.headers or args.no_headers:
        changes["headers"] = _header_flags(args.headers or [])
    auth = _auth_flags(args)
    if auth is not None and args.no_auth:
        raise config.ConfigError("give an auth flag or --no-auth, not both")
    if auth is not None or args.no_auth:
        changes["auth"] = auth
    return changes


def cmd_endpoints_add(args: argparse.Namespace) -> int:
    settings = _settings(args)
    events = args.events.split(",") if args.events else None
    if args.operator and events is None:
        events = list(OPERATOR_EVENT_TYPES)  # not every type: the operator org gets no customer events anyway
    options = endpoints.RequestOptions(_header_flags(args.headers or []), _auth_flags(args))
    with _connect(settings) as conn:
        endpoint = endpoints.add(
            conn, org_id=OPERATOR_ORG if args.operator else args.org, url=args.url, event_types=events,
            secret=args.secret, description=args.description or "", limits=endpoints.Limits(**_limit_changes(args)),
            options=options, ordering=args.ordering or "none",
            allow_insecure=settings.allow_insecure_urls, allowed=settings.networks,
        )
    if args.json:
        output.print_json(endpoint.as_json())
    else:
        output.print_new_endpoint(endpoint, settings)
    return 0


def cmd_endpoints_update(args: argparse.Namespace) -> int:
    settings = _settings(args)
    options = _option_changes(args)
    changes: dict[str, Any] = {"url": args.url, "description": args.description, **_limit_changes(args), **options}
    if args.events is not None:
        changes["event_types"] = args.events.split(",")
    if args.ordering is not None:
        changes["ordering"] = args.ordering
    if not options and not any(v is not None for v in (args.url, args.description, args.events, args.ordering,
                                                       args.limit_max_in_flight, args.limit_rate_limit)):
        raise config.ConfigError("nothing to change: give --url, --events, --description, --max-in-flight, "
                                 "--rate-limit, --ordering, --header, --no-headers, an auth flag or --no-auth")

    async def run() -> endpoints.Endpoint | None:
        async with await _aconnect(settings) as conn:
            return await endpoints.update(conn, args.endpoint_id, None, allow_insecure=settings.allow_insecure_urls,
                                          allowed=settings.networks, **changes)

    endpoint = asyncio.run(run())
    if endpoint is None:
        raise config.ConfigError(f"no endpoint {args.endpoint_id!r}; `deliverer endpoints list` shows the ids")
    if args.json:
        output.print_json(endpoint.as_json())
    else:
        output.print_endpoints([endpoint], False, settings)
    return 0


def cmd_endpoints_list(args: argparse.Namespace) -> int:
    settings = _settings(args)
    with _connect(settings) as conn:
        output.print_endpoints(endpoints.list_all(conn, args.org), args.json, settings)
    return 0


def cmd_endpoints_enable(args: argparse.Namespace) -> int:
    return _set_enabled(args, True)


def cmd_endpoints_disable(args: argparse.Namespace) -> int:
    return _set_enabled(args, False)


def _set_enabled(args: argparse.Namespace, enabled: bool) -> int:
    settings = _settings(args)
    with _connect(settings) as conn:
        output.print_endpoints([endpoints.set_enabled(conn, args.endpoint_id, enabled)], args.json, settings)
    return 0


def cmd_keys_create(args: argparse.Namespace) -> int:
    with _connect(_settings(args)) as conn:
        try:
            created = apikeys.create(conn, args.org, test=args.test)
        except ValueError as exc:
            raise config.ConfigError(str(exc)) from None
    if args.json:
        output.print_json({"id": created.id, "org_id": created.org_id, "key": created.key})
    else:
        print(f"API key {created.id} for {created.org_id}: {created.key}")
        print("Copy it now: only its hash is stored, it cannot be shown again.")
    return 0


def cmd_keys_generate_encryption_key(args: argparse.Namespace) -> int:
    from deliverer.security import sealing

    key = sealing.new_key()
    if args.json:
        output.print_json({"key": key})
    else:
        print(key)
    return 0


def cmd_reseal(args: argparse.Namespace) -> int:
    """Seal every endpoint secret with the first key of DELIVERER_SECRET_KEYS (after a key rotation)."""
    from deliverer.security import sealing

    with _connect(_settings(args)) as conn:
        try:
            count = endpoints.reseal_secrets(conn)
        except sealing.SealingError as exc:
            raise config.ConfigError(str(exc)) from None
    if args.json:
        output.print_json({"resealed": count})
    else:
        print(f"re-sealed the secrets of {count} endpoints with the first key of {sealing.ENV}")
    return 0


# Maintenance ------------------------------------------------------------------


def cmd_rebuild(args: argparse.Namespace) -> int:
    with _connect(_settings(args)) as conn:
        if args.check:
            return _check_projection(conn, args.json)
        with progress_bars() as progress:
            count = projection.rebuild(conn, progress)
    if args.json:
        output.print_json({"open_deliveries": count})
    else:
        print(f"delivery_queue rebuilt from the log: {count} open deliveries")
    return 0


def _check_projection(conn: psycopg.Connection, as_json: bool) -> int:
    differences = projection.diff(conn)
    if as_json:
        output.print_json({"matches": not differences, "differences": [d._asdict() for d in differences]})
    else:
        for difference in differences:
            print(output.difference_line(difference))
        print(f"{len(differences)} rows differ" if differences else "delivery_queue matches the log")
    return 1 if differences else 0


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
    with _connect(_settings(args)) as conn, progress_bars() as progress:
        report = partitions.retain(conn, older_than, dry_run=args.dry_run, progress=progress)
    if args.json:
        output.print_json({"cutoff": report.cutoff, "dry_run": report.dry_run,
                           "decisions": [vars(d) for d in report.decisions], "dedupe_before": report.dedupe_before,
                           "dedupe_pruned": report.dedupe_pruned, "notes": report.notes})
    else:
        print("\n".join(report.lines()))
    return 0


# Reading the log --------------------------------------------------------------


def cmd_deliveries(args: argparse.Namespace) -> int:
    with _connect(_settings(args)) as conn:
        rows = output.delivery_rows(conn, args.org, args.limit)
    if args.json:
        output.print_json([dict(zip(output.DELIVERY_HEADERS, r, strict=True)) for r in rows])
    else:
        output.print_table(output.DELIVERY_HEADERS, rows)
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    settings = _settings(args)
    since = _timestamp(args.since, "--since") if args.since else None
    known = (*EVENT_TYPES, *OPERATOR_EVENT_TYPES)
    if args.event_type is not None and args.event_type not in known:
        raise config.ConfigError(f"--event-type must be one of {', '.join(known)}, got {args.event_type!r}")

    async def fetch() -> list[dict[str, Any]]:
        async with await _aconnect(settings) as conn:
            items, _ = await history.attempts(conn, org_id=args.org, endpoint_id=args.endpoint,
                                              event_type=args.event_type, since=since, limit=args.limit)
        return items

    items = asyncio.run(fetch())
    if args.json:
        output.print_json(items)
    else:
        output.print_table(output.LOG_HEADERS, output.log_rows(items))
    return 0


# Asking for deliveries again --------------------------------------------------


def cmd_replay(args: argparse.Namespace) -> int:
    from deliverer.history import replay

    settings = _settings(args)
    try:
        delivery_id = parse_delivery_id(args.delivery_id)
    except ValueError as exc:
        raise config.ConfigError(str(exc)) from None

    async def run() -> tuple[list[replay.Replayed], dict[str, Any] | None]:
        async with await _aconnect(settings) as conn:
            done = await replay.replay(conn, [delivery_id], org_id=None, actor=_actor())
            return done, await history.delivery(conn, delivery_id, None)

    done, found = asyncio.run(run())
    if found is None:
        raise config.ConfigError(f"no delivery {args.delivery_id}")
    if args.json:
        output.print_json({"delivery_id": args.delivery_id, "replayed": bool(done),
                           "series": done[0].series if done else found["series"], "state": found["state"]})
    elif not done:
        print(f"{args.delivery_id} is {found['state']}; only delivered or failed deliveries can be replayed")
    else:
        print(f"{args.delivery_id}: attempt series {done[0].series} scheduled")
    return 0 if done else 1


def cmd_recover(args: argparse.Namespace) -> int:
    from deliverer.history import replay

    settings = _settings(args)
    since = _timestamp(args.since, "--since")
    until = _timestamp(args.until, "--until") if args.until else datetime.now(UTC) + timedelta(seconds=1)

    async def run() -> list[uuid.UUID]:
        async with await _aconnect(settings) as conn:
            if await endpoints.get(conn, args.endpoint, None) is None:
                raise config.ConfigError(f"no endpoint {args.endpoint!r}; `deliverer endpoints list` shows the ids")
            with progress_bars() as progress:
                return await replay.recover(conn, args.endpoint, org_id=None, since=since, until=until,
                                            actor=_actor(), dry_run=args.dry_run, progress=progress)

    ids = asyncio.run(run())
    if args.json:
        output.print_json({"dry_run": args.dry_run, "count": len(ids),
                           "delivery_ids": [delivery_public_id(i) for i in ids]})
        return 0
    verb = "would replay" if args.dry_run else "replayed"
    print(f"{verb} {len(ids)} failed deliveries of {args.endpoint}")
    for delivery_id in ids:
        print(f"  {delivery_public_id(delivery_id)}")
    return 0


def cmd_test_webhook(args: argparse.Namespace) -> int:
    from deliverer.delivery.worker import default_worker_id
    from deliverer.history import ping

    settings = _settings(args)

    async def run() -> dict[str, Any]:
        async with await _aconnect(settings) as conn:
            endpoint = await endpoints.target_by_url(conn, args.org, args.url)
            if endpoint is None:
                raise config.ConfigError(f"{args.url} is not a registered endpoint; register it first with "
                                         "`deliverer endpoints add`")
            async with ping.Sender(settings, f"cli-{default_worker_id()}") as sender:
                try:
                    return await ping.send(conn, sender, endpoint)
                except ping.EndpointDisabled as exc:
                    raise config.ConfigError(str(exc)) from None

    outcome = asyncio.run(run())
    if args.json:
        output.print_json(outcome)
    elif outcome["delivered"]:
        print(f"delivered: HTTP {outcome['http_status']} in {outcome['response_time_ms']} ms "
              f"({outcome['event_id']})")
    else:
        print(f"not delivered: {outcome['error_message']} after {outcome['response_time_ms']} ms "
              f"({outcome['event_id']})")
    return 0 if outcome["delivered"] else 1
