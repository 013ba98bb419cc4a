"""POS API keys: one per terminal, shown once, stored only as a SHA-256 hash."""
from __future__ import annotations

import hashlib
import secrets
import sqlite3
import uuid
from datetime import datetime, timezone

KEY_PREFIX = "stk_"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def create_key(conn: sqlite3.Connection, name: str) -> str:
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    try:
        conn.execute("INSERT INTO api_keys(id, name, key_hash, created_at) VALUES (?, ?, ?, ?)",
                     (str(uuid.uuid4()), name, hash_key(key), datetime.now(timezone.utc).isoformat()))
    except sqlite3.IntegrityError as exc:
        raise ValueError(f"a key named {name!r} already exists") from exc
    return key


def list_keys(conn: sqlite3.Connection) -> list[dict]:
    return [dict(r) | {"key_hash": None} for r in conn.execute(
        "SELECT id, name, created_at, revoked_at FROM api_keys ORDER BY created_at")]


def revoke_key(conn: sqlite3.Connection, name: str) -> bool:
    cur = conn.execute("UPDATE api_keys SET revoked_at = ? WHERE name = ? AND revoked_at IS NULL",
                       (datetime.now(timezone.utc).isoformat(), name))
    return cur.rowcount > 0


def lookup(conn: sqlite3.Connection, key: str) -> str | None:
    """The key's name if it is valid and not revoked."""
    row = conn.execute("SELECT name FROM api_keys WHERE key_hash = ? AND revoked_at IS NULL",
                       (hash_key(key),)).fetchone()
    return row["name"] if row else None
