"""The ``deliverer`` command: its parser (``parser``), one function per command
(``commands``) and what they print (``output``); ``main`` runs it.

The top layer: may import every other package. Only the ``demo`` command imports
``deliverer.dev``, lazily; ``output`` imports no other CLI module, so the demo can
print the same tables.
"""

import os
import sys
from collections.abc import Sequence

import psycopg

from deliverer import settings as config
from deliverer.cli.parser import build_parser
from deliverer.ops import logsetup
from deliverer.registry.errors import EndpointError
from deliverer.security.sealing import SealingError

REFUSED = 2
INTERRUPTED = 130


def _refuse(message: str) -> int:
    """One line on stderr, however many the message had (psycopg's end in a hint on a line of its own)."""
    print(f"deliverer: {' '.join(message.split())}", file=sys.stderr)
    return REFUSED


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command ``argv`` asks for and return its exit status (``parser.EXIT_STATUS``); a refusal
    or a database error is one line on stderr and status 2, never a traceback."""
    args = build_parser().parse_args(argv)
    try:
        base = config.from_env()
        logsetup.configure(args.log_level or base.log_level, args.log_format or base.log_format)
        return int(args.func(args))
    except (config.ConfigError, EndpointError, SealingError) as exc:
        return _refuse(f"error: {exc}")
    except (psycopg.errors.UndefinedTable, psycopg.errors.UndefinedColumn) as exc:
        return _refuse(f"error: the database schema is older than this deliverer ({str(exc).splitlines()[0]}); "
                       "run `deliverer migrate`")
    except psycopg.Error as exc:
        return _refuse(f"database error: {exc}")
    except KeyboardInterrupt:
        print("deliverer: interrupted", file=sys.stderr)
        return INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`deliverer logs | head`): not an error, and nothing more to write.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
