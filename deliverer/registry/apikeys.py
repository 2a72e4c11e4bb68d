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
from psycopg.rows import class_row, dict_row

from deliverer.registry.queries import QUERIES

_PREFIXES = ("sk_live_", "sk_test_")


@dataclass(frozen=True)
class CreatedKey:
    id: str
    org_id: str
    key: str  # the only time the full key exists outside the caller
    prefix: str
    created_at: datetime


@dataclass(frozen=True)
class Caller:
    """Who a valid key speaks for."""

    org_id: str
    key_id: str


def key_hash(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


def create(conn: psycopg.Connection, org_id: str, *, test: bool = False) -> CreatedKey:
    if not isinstance(org_id, str) or not org_id or len(org_id) > 255:
        raise ValueError("org_id must be a non-empty string of at most 255 characters")
    key = _PREFIXES[test] + secrets.token_urlsafe(32)
    row = conn.cursor(row_factory=dict_row).execute(QUERIES["insert_api_key"], {
        "id": "key_" + secrets.token_hex(8), "org_id": org_id, "key_hash": key_hash(key), "prefix": key[:12],
    }).fetchone()
    assert row is not None
    return CreatedKey(key=key, **row)


async def authenticate(conn: psycopg.AsyncConnection[Any], key: str) -> Caller | None:
    """Who a valid key speaks for; None for an unknown, revoked or malformed one."""
    if not key.startswith(_PREFIXES) or len(key) > 200:
        return None
    cur = await conn.cursor(row_factory=class_row(Caller)).execute(QUERIES["org_for_api_key"],
                                                                   {"key_hash": key_hash(key)})
    return await cur.fetchone()
