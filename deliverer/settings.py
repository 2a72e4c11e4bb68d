"""Settings, read from the environment; every one has a matching command-line flag.

| setting            | environment                       | default             |
|--------------------|-----------------------------------|---------------------|
| database_url       | DATABASE_URL                      | (required)          |
| listen_database_url | DELIVERER_LISTEN_DATABASE_URL    | DATABASE_URL; direct or session-pooled |
| prepared_statements | DELIVERER_PREPARED_STATEMENTS    | 1; 0 behind a transaction pooler before PgBouncer 1.21 |
| http_timeout       | DELIVERER_HTTP_TIMEOUT            | 5 seconds           |
| lease_seconds      | DELIVERER_LEASE_SECONDS           | 30 seconds          |
| batch_size         | DELIVERER_BATCH_SIZE              | 100                 |
| max_in_flight      | DELIVERER_MAX_IN_FLIGHT           | 200                 |
| endpoint_max_in_flight | DELIVERER_ENDPOINT_MAX_IN_FLIGHT | 50: per endpoint, across all processes |
| endpoint_rate_limit | DELIVERER_ENDPOINT_RATE_LIMIT | 0: none; deliveries/s per endpoint |
| endpoint_initial_concurrency | DELIVERER_ENDPOINT_INITIAL_CONCURRENCY | 4: a new or idle endpoint's start |
| poll_interval      | DELIVERER_POLL_INTERVAL           | 1 second            |
| retry_delays       | DELIVERER_RETRY_DELAYS            | 5,30,120,600,3600   |
| retry_jitter       | DELIVERER_RETRY_JITTER            | 0 (off)             |
| shutdown_grace     | DELIVERER_SHUTDOWN_GRACE          | 20 seconds          |
| allow_insecure_urls| DELIVERER_ALLOW_INSECURE_URLS     | 0 (HTTPS only)      |
| disable_after      | DELIVERER_DISABLE_AFTER           | 432000 (5 days of failing) |
| allowed_networks   | DELIVERER_ALLOWED_NETWORKS        | none (insecure mode: all) |
| worker_id          | DELIVERER_WORKER_ID               | host-pid-random     |
| log_level          | DELIVERER_LOG_LEVEL               | info                |
| log_format         | DELIVERER_LOG_FORMAT              | auto (json unless a TTY) |
"""

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

from deliverer.security import ssrf

# The customer contract's retry schedule: after attempt 1 fails, 5 s, 30 s, 2 min, 10 min
# and 1 h after each failure; deliverer.delivery.schedule applies it.
SEED_DELAYS: tuple[float, ...] = (5, 30, 120, 600, 3600)


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
    database_url: str = ""
    listen_database_url: str = ""  # empty: DATABASE_URL
    prepared_statements: bool = True
    http_timeout: float = 5.0
    lease_seconds: float = 30.0
    batch_size: int = 100
    max_in_flight: int = 200
    endpoint_max_in_flight: int = 50
    endpoint_rate_limit: float = 0.0  # 0: no rate limit
    endpoint_initial_concurrency: int = 4
    poll_interval: float = 1.0
    retry_delays: tuple[float, ...] = field(default=SEED_DELAYS)
    retry_jitter: float = 0.0
    shutdown_grace: float = 20.0
    allow_insecure_urls: bool = False
    allowed_networks: str = ""
    disable_after: float = 5 * 24 * 3600.0
    worker_id: str = ""
    log_level: str = "info"
    log_format: str = "auto"

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
        try:
            ssrf.parse_networks(self.allowed_networks)
        except ValueError as exc:
            raise ConfigError(f"DELIVERER_ALLOWED_NETWORKS: {exc}") from None
        if self.log_format not in ("auto", "json", "console"):
            raise ConfigError("log_format must be auto, json or console")
        return self

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


_ENV = {
    "database_url": "DATABASE_URL",
    "listen_database_url": "DELIVERER_LISTEN_DATABASE_URL",
    "prepared_statements": "DELIVERER_PREPARED_STATEMENTS",
    "http_timeout": "DELIVERER_HTTP_TIMEOUT",
    "lease_seconds": "DELIVERER_LEASE_SECONDS",
    "batch_size": "DELIVERER_BATCH_SIZE",
    "max_in_flight": "DELIVERER_MAX_IN_FLIGHT",
    "endpoint_max_in_flight": "DELIVERER_ENDPOINT_MAX_IN_FLIGHT",
    "endpoint_rate_limit": "DELIVERER_ENDPOINT_RATE_LIMIT",
    "endpoint_initial_concurrency": "DELIVERER_ENDPOINT_INITIAL_CONCURRENCY",
    "poll_interval": "DELIVERER_POLL_INTERVAL",
    "retry_delays": "DELIVERER_RETRY_DELAYS",
    "retry_jitter": "DELIVERER_RETRY_JITTER",
    "shutdown_grace": "DELIVERER_SHUTDOWN_GRACE",
    "allow_insecure_urls": "DELIVERER_ALLOW_INSECURE_URLS",
    "allowed_networks": "DELIVERER_ALLOWED_NETWORKS",
    "disable_after": "DELIVERER_DISABLE_AFTER",
    "worker_id": "DELIVERER_WORKER_ID",
    "log_level": "DELIVERER_LOG_LEVEL",
    "log_format": "DELIVERER_LOG_FORMAT",
}


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
