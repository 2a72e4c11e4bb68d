"""Named SQL blocks loaded from a .sql file.

Each package keeps all its SQL in one file, split into blocks that start with
``-- name: block_name`` and a one-line description. Parameters use psycopg's
``%(name)s`` style everywhere.
"""

import re
from importlib import resources

_HEADER = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)


def load(package: str, filename: str) -> dict[str, str]:
    text = resources.files(package).joinpath(filename).read_text(encoding="utf-8")
    parts = _HEADER.split(text)
    blocks: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if name in blocks:
            raise ValueError(f"{filename}: block {name!r} is defined twice")
        blocks[name] = body.strip()
    return blocks
