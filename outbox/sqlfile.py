"""Named SQL blocks loaded from a .sql file.

Each package keeps all its SQL in one file, split into blocks that start with
``-- name: block_name`` and a one-line description. Parameters use psycopg's
``%(name)s`` style everywhere. Comments are for the file's readers: they are
dropped when loading.
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
        blocks[name] = _compact(body)
    return blocks


def _compact(sql: str) -> str:
    """The statement without its comment lines and indentation. psycopg caches how it
    parses a statement only under 4 KiB; a longer one (the claim, with its comments)
    was parsed again on every execution, 80 µs of a worker's CPU each time."""
    lines = (line.strip() for line in sql.splitlines())
    return "\n".join(line for line in lines if line and not line.startswith("--"))
