"""The POS API keys' SQL (table api_keys): only each key's SHA-256 hash is stored."""
from __future__ import annotations

import sqlite3


def insert_key(conn: sqlite3.Connection, key_id: str, name: str, key_hash: str, created_at: str, api: str) -> None:
    """Raises sqlite3.IntegrityError when the name (or hash) is taken."""
    conn.execute("INSERT INTO api_keys(id, name, key_hash, created_at, api) VALUES (?, ?, ?, ?, ?)",
                 (key_id, name, key_hash, created_at, api))


def all_keys(conn: sqlite3.Connection) -> list[sqlite3.Row]:
    """(id, name, created_at, revoked_at, api) of every key, oldest first."""
    return conn.execute("SELECT id, name, created_at, revoked_at, api FROM api_keys ORDER BY created_at").fetchall()


def key_names(conn: sqlite3.Connection) -> set[str]:
    """Every name given so far, revoked keys' too (a name is never reused)."""
    return {r[0] for r in conn.execute("SELECT name FROM api_keys")}


def revoke(conn: sqlite3.Connection, name: str, revoked_at: str) -> bool:
    """True when a live key of that name was revoked."""
    cur = conn.execute("UPDATE api_keys SET revoked_at = ? WHERE name = ? AND revoked_at IS NULL",
                       (revoked_at, name))
    return cur.rowcount > 0


def live_key(conn: sqlite3.Connection, key_hash: str) -> sqlite3.Row | None:
    """(name, api) of the key with this hash, unless it was revoked."""
    return conn.execute("SELECT name, api FROM api_keys WHERE key_hash = ? AND revoked_at IS NULL",
                        (key_hash,)).fetchone()
