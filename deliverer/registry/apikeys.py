"""API keys: ``sk_live_…`` / ``sk_test_…``, each scoped to one org, stored only as a hash.

The key is shown once, when created. The database keeps its SHA-256: a key has
32 random bytes, so unlike a password it needs no slow hash to resist guessing.
"""

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg

from deliverer.registry.queries import QUERIES

_PREFIXES = ("sk_live_", "sk_test_")


@dataclass(frozen=True)
class CreatedKey:
    id: str
    org_id: str
    key: str  # the only time the full key exists outside the caller
    prefix: str
    created_at: datetime


def key_hash(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


def create(conn: psycopg.Connection, org_id: str, *, test: bool = False) -> CreatedKey:
    if not isinstance(org_id, str) or not org_id or len(org_id) > 255:
        raise ValueError("org_id must be a non-empty string of at most 255 characters")
    key = _PREFIXES[test] + secrets.token_urlsafe(32)
    row = conn.execute(QUERIES["insert_api_key"], {
        "id": "key_" + secrets.token_hex(8), "org_id": org_id, "key_hash": key_hash(key), "prefix": key[:12],
    }).fetchone()
    assert row is not None
    return CreatedKey(row[0], row[1], key, row[2], row[3])


async def authenticate(conn: psycopg.AsyncConnection[Any], key: str) -> tuple[str, str] | None:
    """(org id, key id) for a valid key; None for an unknown, revoked or malformed one."""
    if not key.startswith(_PREFIXES) or len(key) > 200:
        return None
    row = await (await conn.execute(QUERIES["org_for_api_key"], {"key_hash": key_hash(key)})).fetchone()
    return None if row is None else (row[0], row[1])
