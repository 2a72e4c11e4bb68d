"""Structured logging: JSON lines with ISO UTC timestamps, or a readable console format on a TTY.

Standard-library loggers (aiohttp, psycopg, asyncio) go through the same
processors, so one stream carries everything. Tracebacks are rendered as data
without local variables, and anything that looks like a secret is redacted
before rendering, whichever logger it came from. A line logged inside a trace (an
attempt of an event published in one, say) carries its ``trace_id`` and ``span_id``.
"""

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog
from structlog.tracebacks import ExceptionDictTransformer

from deliverer.ops import tracing

_SECRET_VALUE = re.compile(
    r"(whsec_[A-Za-z0-9+/=_-]+|sk_(?:live|test)_[A-Za-z0-9_-]+|(?:Bearer|Basic)\s+\S+"
    r"|-----BEGIN [A-Z ]*PRIVATE KEY-----.*?(?:-----END [A-Z ]*PRIVATE KEY-----|$))", re.DOTALL)
# The user information of a URL (an egress proxy's): scheme://user:password@host.
_URL_CREDENTIALS = re.compile(r"(?<=://)[^/@\s]+@")
_SECRET_KEYS = {"secret", "authorization", "api_key", "key", "password", "token", "auth", "headers",
                "proxy_authorization"}
REDACTED = "[redacted]"


def _redact(value: Any) -> Any:
    if isinstance(value, str):
        return _URL_CREDENTIALS.sub(REDACTED + "@", _SECRET_VALUE.sub(REDACTED, value))
    if isinstance(value, dict):
        return {k: REDACTED if str(k).lower() in _SECRET_KEYS else _redact(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redact(v) for v in value]
    return value


def redact_secrets(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Drop secret-looking values: endpoint secrets, API keys, Authorization credentials, private keys,
    the password of a URL; and whatever is logged under a name that says it is one (an endpoint's
    headers and auth included)."""
    for key, value in event_dict.items():
        event_dict[key] = REDACTED if key.lower() in _SECRET_KEYS else _redact(value)
    return event_dict


def configure(level: str = "info", fmt: str = "auto") -> None:
    if fmt == "auto":
        fmt = "console" if sys.stderr.isatty() else "json"
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        tracing.log_ids,
    ]
    if fmt == "json":
        final: list[structlog.types.Processor] = [
            structlog.processors.ExceptionRenderer(ExceptionDictTransformer(show_locals=False)),
            redact_secrets,
            structlog.processors.JSONRenderer(),
        ]
    else:
        # plain_traceback: the default console formatter prints every frame's local
        # variables, and locals hold secrets.
        final = [redact_secrets, structlog.dev.ConsoleRenderer(exception_formatter=structlog.dev.plain_traceback)]
    numeric_level = logging.getLevelNamesMapping()[level.upper()]
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        wrapper_class=structlog.make_filtering_bound_logger(numeric_level),
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *final],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric_level)
    # Per-request access lines would drown the delivery log; errors still come through.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
