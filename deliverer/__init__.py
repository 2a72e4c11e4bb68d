"""The webhook deliverer: claims due deliveries, signs and POSTs them, and
records every attempt in the append-only delivery log.

It needs the ``deliverer`` extra (``pip install 'docextract-webhooks[deliverer]'``);
the bare package is the producer side, ``outbox``, on psycopg alone.
"""

import sys
from importlib.metadata import version
from importlib.util import find_spec
from itertools import pairwise
from pathlib import Path

__version__ = version("docextract-webhooks")  # pyproject.toml's [project] version, the one place it is written

# What the extra installs, by import name.
_EXTRA = ("aiohttp", "structlog", "prometheus_client", "psycopg_pool", "cryptography", "httptools", "orjson")

_missing = [name for name in _EXTRA if find_spec(name) is None]
if _missing:
    _message = (f"the deliverer needs the [deliverer] extra ({', '.join(_missing)} not installed): "
                "pip install 'docextract-webhooks[deliverer]'")
    # The `deliverer` command (and `python -m deliverer`) says so in one line, as for any
    # other setup error; an application importing the package gets an ImportError.
    if Path(sys.argv[0]).stem == "deliverer" or ("-m", "deliverer") in pairwise(sys.orig_argv):
        sys.exit(f"deliverer: error: {_message}")
    raise ModuleNotFoundError(_message, name=_missing[0])
