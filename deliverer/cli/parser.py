"""The ``deliverer`` command line: its subcommands, their arguments, and the setting flags.

Every setting comes from the environment (see ``deliverer.settings``) and can be
overridden by the flag of the same name, e.g. DELIVERER_HTTP_TIMEOUT and
--http-timeout. Each subcommand's ``func`` is its function in ``commands``.
"""

import argparse
from collections.abc import Callable
from dataclasses import fields
from typing import NoReturn, TypeAlias

from deliverer import settings as config
from deliverer.cli import commands as cmd
from deliverer.ops import probes

DESCRIPTION = "Deliver signed webhooks from the outbox; manage endpoints, API keys and the delivery log."
EXIT_STATUS = """exit status:
  0    done
  1    done, and the answer is no: rebuild-projections --check found differences,
       test-webhook was not delivered, replay found the delivery still open
  2    refused: a wrong argument or setting, a missing key, an unreachable or
       outdated database; one line on stderr says what to fix
  130  interrupted (Ctrl-C)
"""

JSON_HELP = "print JSON for scripts instead of text"


class Parser(argparse.ArgumentParser):
    """Usage mistakes as the CLI's other refusals: one line on stderr, status 2, not the full usage."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")

Command = Callable[[argparse.Namespace], int]
# What add_subparsers returns: argparse names it only privately, and generic only to type checkers.
Subcommands: TypeAlias = "argparse._SubParsersAction[Parser]"


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="deliverer", description=DESCRIPTION, epilog=EXIT_STATUS,
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _running(commands)
    _endpoints(commands)
    _maintenance(commands)
    deliveries = _command(commands, "deliveries", "list deliveries and their state, derived from the log",
                          cmd.cmd_deliveries)
    deliveries.add_argument("--org", help="only this org's deliveries")
    deliveries.add_argument("--limit", type=int, default=50)
    deliveries.add_argument("--json", action="store_true", help=JSON_HELP)
    _command(commands, "demo", "run the end-to-end demo (embedded PostgreSQL unless DATABASE_URL is set)",
             cmd.cmd_demo)
    _api(commands)
    _keys(commands)
    _logs(commands)
    _replays(commands)
    return parser


def setting_flags(parser: argparse.ArgumentParser, skip: frozenset[str] = frozenset()) -> None:
    group = parser.add_argument_group("settings (each defaults to its environment variable)")
    for f in fields(config.Settings):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        if f.name == "allow_insecure_urls":
            group.add_argument(flag, action="store_const", const="1", default=None,
                               help=f"accept http:// and loopback URLs, for development ({config.env_name(f.name)})")
        else:
            group.add_argument(flag, metavar=f.name.upper(), default=None, help=config.env_name(f.name))


def _command(commands: Subcommands, name: str, help_text: str, func: Command, *,
             json: bool = False) -> argparse.ArgumentParser:
    sub = commands.add_parser(name, help=help_text, description=help_text, epilog=EXIT_STATUS,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    sub.set_defaults(func=func)
    if json:
        sub.add_argument("--json", action="store_true", help=JSON_HELP)
    setting_flags(sub)
    return sub


def _running(commands: Subcommands) -> None:
    _command(commands, "migrate", "apply schema.sql (idempotent)", cmd.cmd_migrate, json=True)
    run = _command(commands, "run", "deliver webhooks until SIGTERM", cmd.cmd_run)
    run.add_argument("--metrics-port", help="port for /metrics, /livez and /readyz (DELIVERER_METRICS_PORT, "
                     f"default {probes.RUN_PORT}; 0 picks a free one)")


def _endpoints(commands: Subcommands) -> None:
    eps = commands.add_parser("endpoints", help="register and manage webhook endpoints")
    actions = eps.add_subparsers(dest="endpoints_command", required=True, metavar="ACTION")
    add = _endpoint_action(actions, "add", "register an endpoint; prints its id and secret", cmd.cmd_endpoints_add,
                           limits=True)
    org = add.add_mutually_exclusive_group(required=True)
    org.add_argument("--org", help="the org whose events go to this endpoint")
    org.add_argument("--operator", action="store_true",
                     help="an endpoint of the operator, for the operator events (endpoint.disabled, "
                          "endpoint.recovered, delivery.exhausted; --events to choose among them)")
    add.add_argument("--url", required=True, help="https:// URL that accepts POST")
    add.add_argument("--events", help="comma-separated event types (default: all)")
    add.add_argument("--secret", help="import an existing signing secret instead of generating one")
    add.add_argument("--description", help="free text shown in listings")
    _request_option_flags(add)
    update = _endpoint_action(actions, "update", "change an endpoint's URL, events, description, limits, headers "
                              "or auth; what is not given stays as it is", cmd.cmd_endpoints_update, limits=True)
    update.add_argument("endpoint_id")
    update.add_argument("--url", help="new https:// URL")
    update.add_argument("--events", help="comma-separated event types, or * for all")
    update.add_argument("--description", help="free text shown in listings")
    _request_option_flags(update)
    update.add_argument("--no-headers", action="store_true", help="remove every custom header")
    update.add_argument("--no-auth", action="store_true", help="remove the endpoint's auth")
    listing = _endpoint_action(actions, "list", "list endpoints", cmd.cmd_endpoints_list)
    listing.add_argument("--org", help="only this org's endpoints")
    for name, help_text, func in (("disable", "stop delivering to an endpoint", cmd.cmd_endpoints_disable),
                                  ("enable", "resume delivering to an endpoint", cmd.cmd_endpoints_enable)):
        _endpoint_action(actions, name, help_text, func).add_argument("endpoint_id")


def _endpoint_action(actions: Subcommands, name: str, help_text: str, func: Command, *,
                     limits: bool = False) -> argparse.ArgumentParser:
    sub = actions.add_parser(name, help=help_text, description=help_text)
    sub.set_defaults(func=func)
    sub.add_argument("--json", action="store_true", help=JSON_HELP)
    if limits:
        _limit_flags(sub)
    # --max-in-flight is the endpoint's limit here; the process setting of that name only matters to `run`.
    setting_flags(sub, frozenset({"max_in_flight"} if limits else ()))
    return sub


def _request_option_flags(sub: argparse.ArgumentParser) -> None:
    """Custom headers and auth; a credential given as - is read from the first line of stdin (not on argv)."""
    sub.add_argument("--header", dest="headers", action="append", metavar="'NAME: VALUE'",
                     help="a header sent with every request, repeatable; on update the headers given replace all")
    auth = sub.add_mutually_exclusive_group()
    auth.add_argument("--basic-auth", metavar="USER:PASSWORD|-", help="HTTP Basic authentication")
    auth.add_argument("--bearer-token", metavar="TOKEN|-", help="an Authorization: Bearer token")
    auth.add_argument("--client-cert", metavar="PEM_FILE",
                      help="mutual TLS: the client certificate (then any intermediates); needs --client-key")
    sub.add_argument("--client-key", metavar="PEM_FILE", help="mutual TLS: the certificate's unencrypted key")


def _limit_flags(sub: argparse.ArgumentParser) -> None:
    """The endpoint's own limits, under dests of their own: settings are read from the flags named as they are."""
    sub.add_argument("--max-in-flight", dest="limit_max_in_flight", metavar="N|default",
                     help="most requests open to it at once across every deliverer, 1 to 1000; default: "
                          "DELIVERER_ENDPOINT_MAX_IN_FLIGHT (50 unless set)")
    sub.add_argument("--rate-limit", dest="limit_rate_limit", metavar="R|none",
                     help="most deliveries a second to it across every deliverer, above 0 and at most 10000 "
                          "(e.g. 0.5); none or default: DELIVERER_ENDPOINT_RATE_LIMIT, no limit unless set")
    sub.add_argument("--ordering", metavar="none|fifo",
                     help="fifo: send one at a time per ordering key, in publish order (for deliveries published "
                          "from then on); none: in parallel, as they come (the default)")


def _maintenance(commands: Subcommands) -> None:
    rebuild = _command(commands, "rebuild-projections", "recompute delivery_queue from the delivery log",
                       cmd.cmd_rebuild, json=True)
    rebuild.add_argument("--check", action="store_true",
                         help="only compare the live queue with the log; exit 1 if they differ")
    retention = _command(commands, "retention", "drop partitions of events and delivery log older than a cutoff, "
                         "create upcoming ones, forget old dedupe keys", cmd.cmd_retention, json=True)
    retention.add_argument("--older-than", required=True, metavar="DURATION",
                           help="drop data older than this: 30d, 12h or 90m")
    retention.add_argument("--dry-run", action="store_true", help="only print what would be done")
    retention.add_argument("--force", action="store_true", help="allow --older-than under a day")


def _api(commands: Subcommands) -> None:
    api = _command(commands, "api", "serve the webhooks HTTP API", cmd.cmd_api)
    api.add_argument("--host", help="address to listen on (DELIVERER_API_HOST, default 0.0.0.0)")
    api.add_argument("--port", help="port to listen on (DELIVERER_API_PORT, default 8080)")
    api.add_argument("--metrics-port", help="port for /metrics, /livez and /readyz (DELIVERER_METRICS_PORT, "
                     f"default {probes.API_PORT}, beside the API's own port)")


def _keys(commands: Subcommands) -> None:
    keys = commands.add_parser("keys", help="API keys")
    actions = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    create = actions.add_parser("create", help="create an API key for an org; printed once",
                                description="create an API key for an org; printed once")
    create.set_defaults(func=cmd.cmd_keys_create)
    create.add_argument("--org", required=True)
    create.add_argument("--test", action="store_true", help="an sk_test_ key instead of sk_live_")
    create.add_argument("--json", action="store_true", help=JSON_HELP)
    setting_flags(create)
    generate = actions.add_parser(
        "generate-encryption-key", help="print a new key for DELIVERER_SECRET_KEYS",
        description="print a new Fernet key for DELIVERER_SECRET_KEYS (endpoint secrets at rest)")
    # It takes no setting flags, so main finds no log settings on it either.
    generate.set_defaults(func=cmd.cmd_keys_generate_encryption_key, log_level=None, log_format=None)
    generate.add_argument("--json", action="store_true", help=JSON_HELP)
    _command(commands, "reseal", "re-seal every endpoint secret with the first key of DELIVERER_SECRET_KEYS",
             cmd.cmd_reseal, json=True)


def _logs(commands: Subcommands) -> None:
    logs = _command(commands, "logs", "attempts, newest first, from the delivery log", cmd.cmd_logs)
    logs.add_argument("--endpoint", help="only this endpoint")
    logs.add_argument("--org", help="only this org")
    logs.add_argument("--event-type", help="only this event type")
    logs.add_argument("--since", help="only attempts recorded at or after this ISO-8601 time")
    logs.add_argument("--limit", type=int, default=50)
    logs.add_argument("--json", action="store_true", help=JSON_HELP)


def _replays(commands: Subcommands) -> None:
    replay = _command(commands, "replay", "start a new attempt series for a delivered or failed delivery",
                      cmd.cmd_replay, json=True)
    replay.add_argument("delivery_id", help="dlv_…")
    recover = _command(commands, "recover", "replay an endpoint's failed deliveries of events created since a time",
                       cmd.cmd_recover, json=True)
    recover.add_argument("--endpoint", required=True)
    recover.add_argument("--since", required=True, help="ISO-8601 time")
    recover.add_argument("--until", help="ISO-8601 time (default: now)")
    recover.add_argument("--dry-run", action="store_true", help="only count what would be replayed")
    test_webhook = _command(commands, "test-webhook", "send the webhook.test event to a registered endpoint now",
                            cmd.cmd_test_webhook)
    test_webhook.add_argument("url")
    test_webhook.add_argument("--org", help="the org, when several registered the same URL")
    test_webhook.add_argument("--json", action="store_true", help=JSON_HELP)
