"""Settings, read from the environment; every one has a matching command-line flag.

Each field of :class:`Settings` is declared with :func:`setting`: its variable,
what it means and its default as people read it. That declaration is the one
source of the settings table in docs/configuration.md (``make docs-tables``
rewrites it; a test fails when it is stale) and of the variable names the
flags' help and the error messages use. ``ELSEWHERE`` describes the few
variables read outside ``Settings``, for the same table.
"""

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any, NamedTuple, TypeVar

from deliverer.security import egress, ssrf

# The customer contract's retry schedule: after attempt 1 fails, 5 s, 30 s, 2 min, 10 min
# and 1 h after each failure; deliverer.delivery.schedule applies it.
SEED_DELAYS: tuple[float, ...] = (5, 30, 120, 600, 3600)


T = TypeVar("T")


def setting(default: T, env: str, meaning: str, *, shown: str | None = None) -> T:
    """A field of :class:`Settings`: its default, its environment variable, and the docs' line for it
    (``shown`` is the default as the docs print it, when ``default`` itself would not say it)."""
    return field(default=default, metadata={"env": env, "meaning": meaning, "shown": shown})


class Variable(NamedTuple):
    """An environment variable read outside :class:`Settings`, described for the settings table."""

    env: str
    flag: str
    default: str
    meaning: str


class ConfigError(ValueError):
    """A setting has a value the deliverer cannot use."""


def _parse_bool(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ConfigError(f"{name} must be 1/0, true/false, yes/no or on/off, got {raw!r}")


def parse_delays(raw: str) -> tuple[float, ...]:
    try:
        delays = tuple(float(part) for part in raw.split(",") if part.strip())
    except ValueError:
        raise ConfigError(f"retry delays must be comma-separated seconds like 5,30,120, got {raw!r}") from None
    if not delays or any(d < 0 for d in delays):
        raise ConfigError(f"retry delays must be one or more non-negative numbers, got {raw!r}")
    return delays


@dataclass(frozen=True)
class Settings:
    database_url: str = setting(
        "", "DATABASE_URL", "PostgreSQL connection string; may be a transaction-pooling PgBouncer "
        "([Scaling out](operations.md#scaling-out))", shown="(required)")
    listen_database_url: str = setting(
        "", "DELIVERER_LISTEN_DATABASE_URL", "the worker's LISTEN connection: PostgreSQL directly or a "
        "session-pooled PgBouncer, never a transaction pooler", shown="`DATABASE_URL`")
    prepared_statements: bool = setting(
        True, "DELIVERER_PREPARED_STATEMENTS", "0 turns off server-side prepared statements; needed behind a "
        "transaction pooler before PgBouncer 1.21", shown="1")
    http_timeout: float = setting(5.0, "DELIVERER_HTTP_TIMEOUT", "seconds for the whole request and response")
    lease_seconds: float = setting(30.0, "DELIVERER_LEASE_SECONDS", "claim lease in seconds; at least the "
                                   "timeout + 5 s")
    batch_size: int = setting(100, "DELIVERER_BATCH_SIZE", "deliveries claimed per statement")
    max_in_flight: int = setting(200, "DELIVERER_MAX_IN_FLIGHT", "concurrent requests per process")
    endpoint_max_in_flight: int = setting(
        50, "DELIVERER_ENDPOINT_MAX_IN_FLIGHT", "requests open at once to an endpoint across every deliverer "
        "process, for endpoints whose `max_in_flight` is null; the allowance adapts below it "
        "([Endpoint limits](api.md#endpoint-limits))")
    endpoint_rate_limit: float = setting(
        0.0, "DELIVERER_ENDPOINT_RATE_LIMIT", "deliveries a second to an endpoint across every process, for "
        "endpoints whose `rate_limit` is null; 0: none", shown="0")
    endpoint_initial_concurrency: int = setting(
        4, "DELIVERER_ENDPOINT_INITIAL_CONCURRENCY", "sends in flight an endpoint starts with (new, or idle for a "
        "minute): a dead endpoint holds this many, not the ceiling, before its first timeout")
    db_timeout: float = setting(
        10.0, "DELIVERER_DB_TIMEOUT", "seconds a worker waits for the database to answer a statement before it "
        "gives the connection up as lost: a partition that drops packets answers nothing, and without it a claim "
        "would wait as long as TCP does (minutes)")
    poll_interval: float = setting(1.0, "DELIVERER_POLL_INTERVAL", "longest sleep in seconds between claims when "
                                   "no notification comes")
    retry_delays: tuple[float, ...] = setting(
        SEED_DELAYS, "DELIVERER_RETRY_DELAYS", "seconds after each failed attempt; attempts = delays + 1",
        shown="5,30,120,600,3600")
    retry_jitter: float = setting(0.0, "DELIVERER_RETRY_JITTER", "spread each delay by ± this fraction", shown="0")
    shutdown_grace: float = setting(20.0, "DELIVERER_SHUTDOWN_GRACE", "seconds in-flight sends get to finish "
                                    "after SIGTERM")
    allow_insecure_urls: bool = setting(
        False, "DELIVERER_ALLOW_INSECURE_URLS", "development only: accept `http://` and loopback/private URLs",
        shown="0")
    allowed_networks: str = setting(
        "", "DELIVERER_ALLOWED_NETWORKS", "non-public networks webhooks may still reach, e.g. `10.1.0.0/16,::1` "
        "(in development mode, the only ones, if set)", shown="none")
    egress_proxy: str = setting(
        "", "DELIVERER_EGRESS_PROXY", "forward proxy for every webhook connection: `http://[user:password@]host:port` "
        "(CONNECT tunnel) or `socks5://[user:password@]host:port`; the SSRF guard vets the destination and the proxy "
        "is asked for that address (docs/security.md, Egress proxy)", shown="none")
    http_client: str = setting(
        "default", "DELIVERER_HTTP_CLIENT", "`default` (the deliverer's own keep-alive client) or `aiohttp` (aiohttp's "
        "client: the same requests and outcomes at a higher CPU cost, no egress proxy; docs/performance.md)")
    disable_after: float = setting(
        5 * 24 * 3600.0, "DELIVERER_DISABLE_AFTER", "seconds of nothing but failures before an endpoint is "
        "disabled", shown="432000 (5 days)")
    worker_id: str = setting("", "DELIVERER_WORKER_ID", "the worker's name in logs and in PostgreSQL's "
                             "`application_name`", shown="host-pid-random")
    log_level: str = setting("info", "DELIVERER_LOG_LEVEL", "debug, info, warning or error")
    log_format: str = setting("auto", "DELIVERER_LOG_FORMAT", "json, console, or auto: JSON lines unless stderr is "
                              "a terminal")
    traces_exporter: str = setting(
        "none", "OTEL_TRACES_EXPORTER", "none, otlp or console: export a span per attempt, claim and outcome batch "
        "(needs the `otel` extra; the other `OTEL_*` variables configure it, [Tracing](tracing.md))")

    def validated(self) -> "Settings":
        if self.http_timeout <= 0:
            raise ConfigError("http_timeout must be positive")
        if self.lease_seconds < self.http_timeout + 5:
            raise ConfigError(
                f"lease_seconds ({self.lease_seconds}) must be at least http_timeout + 5 s "
                f"({self.http_timeout + 5}), or a slow send could be taken over while still running"
            )
        if min(self.batch_size, self.max_in_flight, self.endpoint_max_in_flight,
               self.endpoint_initial_concurrency) < 1:
            raise ConfigError("batch_size, max_in_flight, endpoint_max_in_flight and endpoint_initial_concurrency "
                              "must be at least 1")
        if self.endpoint_rate_limit < 0:
            raise ConfigError("endpoint_rate_limit must be 0 (none) or a positive number of deliveries a second")
        if self.shutdown_grace < 0:
            raise ConfigError("shutdown_grace must be zero or more seconds")
        if not 0 <= self.retry_jitter < 1:
            raise ConfigError("retry_jitter must be a fraction in [0, 1)")
        self._check_egress()
        if self.traces_exporter not in ("none", "otlp", "console"):
            raise ConfigError("OTEL_TRACES_EXPORTER must be none, otlp or console")
        if self.log_format not in ("auto", "json", "console"):
            raise ConfigError("log_format must be auto, json or console")
        return self

    def _check_egress(self) -> None:
        """Where webhooks may go and through what."""
        try:
            ssrf.parse_networks(self.allowed_networks)
        except ValueError as exc:
            raise ConfigError(f"DELIVERER_ALLOWED_NETWORKS: {exc}") from None
        try:
            egress.parse(self.egress_proxy)
        except egress.ProxyUrlError as exc:
            raise ConfigError(str(exc)) from None
        if self.http_client not in ("default", "aiohttp"):
            raise ConfigError("DELIVERER_HTTP_CLIENT must be default or aiohttp")
        if self.http_client == "aiohttp" and self.egress_proxy:
            raise ConfigError("DELIVERER_EGRESS_PROXY needs DELIVERER_HTTP_CLIENT=default: the aiohttp client "
                              "cannot send to the address the SSRF guard vetted through a proxy")

    @property
    def proxy(self) -> egress.Proxy | None:
        """The egress proxy, None for direct connections."""
        return egress.parse(self.egress_proxy)

    @property
    def networks(self) -> tuple[ssrf.Network, ...]:
        """Non-public networks webhooks may still reach. Development mode (insecure URLs allowed) opens all,
        unless an explicit list narrows it."""
        return ssrf.allowed_networks(self.allowed_networks, allow_insecure=self.allow_insecure_urls)

    @property
    def listen_url(self) -> str:
        """Where the worker LISTENs: a connection that keeps its server session (not a transaction pooler)."""
        return self.listen_database_url or self.database_url

    @property
    def max_attempts(self) -> int:
        return len(self.retry_delays) + 1


def _variables() -> dict[str, str]:
    undeclared = [f.name for f in fields(Settings) if "env" not in f.metadata]
    if undeclared:  # a field added as `name: type = default` has no variable and no line in the docs
        raise TypeError(f"Settings.{undeclared[0]}: declare it with setting(default, env, meaning)")
    return {f.name: f.metadata["env"] for f in fields(Settings)}


_ENV = _variables()

# Read where they are used (the CLI, deliverer.security.sealing); described here for the settings table.
ELSEWHERE = (
    Variable("DELIVERER_SECRET_KEYS", "", "(required)", "Fernet keys sealing endpoint secrets at rest, "
             "comma-separated: the first seals, all unseal; `deliverer keys generate-encryption-key` makes one"),
    Variable("DELIVERER_METRICS_PORT", "--metrics-port", "8091 (`run`), 8092 (`api`)", "port of `/metrics`, "
             "`/livez` and `/readyz` ([Metrics, probes and logs](operations.md#metrics-probes-and-logs)); "
             "0 picks a free one"),
    Variable("DELIVERER_API_HOST", "--host", "0.0.0.0", "the address `deliverer api` listens on"),
    Variable("DELIVERER_API_PORT", "--port", "8080", "the port `deliverer api` listens on"),
)


def convert(name: str, raw: str) -> Any:
    """Turn one setting's text (from the environment or a flag) into its value."""
    kind = {f.name: f.type for f in fields(Settings)}[name]
    label = _ENV[name]
    try:
        if kind in ("float", float):
            return float(raw)
        if kind in ("int", int):
            return int(raw)
    except ValueError:
        raise ConfigError(f"{label} must be a number, got {raw!r}") from None
    if kind in ("bool", bool):
        return _parse_bool(label, raw)
    if name == "retry_delays":
        return parse_delays(raw)
    return raw


def from_env(environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    environ = os.environ if environ is None else environ
    values = {name: convert(name, environ[var]) for name, var in _ENV.items() if var in environ}
    values.update({k: v for k, v in overrides.items() if v is not None})
    return replace(Settings(), **values).validated()


def env_name(setting: str) -> str:
    return _ENV[setting]
