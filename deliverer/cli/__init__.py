"""The ``deliverer`` command: its parser (``parser``), one function per command
(``commands``) and what they print (``output``); ``main`` runs it.

The top layer: may import every other package. Only the ``demo`` command imports
``deliverer.dev``, lazily; ``output`` imports no other CLI module, so the demo can
print the same tables.
"""

import sys
from collections.abc import Sequence

import psycopg

from deliverer import settings as config
from deliverer.cli.parser import build_parser
from deliverer.ops import logsetup
from deliverer.registry.endpoints import EndpointError


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command ``argv`` asks for and return its exit status; a refusal or a database
    error is one line on stderr and status 2, never a traceback."""
    args = build_parser().parse_args(argv)
    try:
        base = config.from_env()
        logsetup.configure(args.log_level or base.log_level, args.log_format or base.log_format)
        return int(args.func(args))
    except (config.ConfigError, EndpointError) as exc:
        print(f"deliverer: error: {exc}", file=sys.stderr)
        return 2
    except (psycopg.errors.UndefinedTable, psycopg.errors.UndefinedColumn) as exc:
        print(f"deliverer: error: the database schema is older than this deliverer ({str(exc).splitlines()[0]}); "
              "run `deliverer migrate`", file=sys.stderr)
        return 2
    except psycopg.Error as exc:
        print(f"deliverer: database error: {str(exc).strip()}", file=sys.stderr)
        return 2
