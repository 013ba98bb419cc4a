"""The delegated credentials' SQL (table credentials): allocation and closure in the sealing
transaction (agent/signers/credentials.py), arrivals from the cloud, closures sent, revocation
(agent/renewal.py).

Like store/repository.py, these take the connection of the transaction they belong to.
"""
from __future__ import annotations

import sqlite3
from typing import Any, Iterable


def active_credential(conn: sqlite3.Connection) -> sqlite3.Row | None:
    return conn.execute("SELECT * FROM credentials WHERE state = 'active'").fetchone()


def ready_credentials(conn: sqlite3.Connection, before_block: int | None = None) -> list[sqlite3.Row]:
    """Credentials waiting to take over, in block order (those before `before_block` only)."""
    if before_block is None:
        return conn.execute("SELECT * FROM credentials WHERE state = 'ready' ORDER BY block_start").fetchall()
    return conn.execute("SELECT * FROM credentials WHERE state = 'ready' AND block_start < ? ORDER BY block_start",
                        (before_block,)).fetchall()


def usable_credentials(conn: sqlite3.Connection) -> list[sqlite3.Row]:
    return conn.execute("SELECT * FROM credentials WHERE state IN ('active','ready') ORDER BY block_start").fetchall()


def set_next_number(conn: sqlite3.Connection, credential_id: str, next_number: int) -> None:
    conn.execute("UPDATE credentials SET next_number = ? WHERE id = ?", (next_number, credential_id))


def activate_credential(conn: sqlite3.Connection, credential_id: str) -> None:
    conn.execute("UPDATE credentials SET state = 'active' WHERE id = ?", (credential_id,))


def close_credential(conn: sqlite3.Connection, credential_id: str, closed_at: str, closure_json: str) -> None:
    conn.execute("UPDATE credentials SET state = 'closed', closed_at = ?, closure = ? WHERE id = ?",
                 (closed_at, closure_json, credential_id))


def insert_credential(conn: sqlite3.Connection, values: Iterable[Any]) -> bool:
    """Store a credential as `ready` unless it is there already; True when it was new.
    `values`: id, body, block_start, block_end, not_before, not_after, received_at."""
    credential_id, body, start, end, not_before, not_after, received_at = values
    if conn.execute("SELECT 1 FROM credentials WHERE id = ?", (credential_id,)).fetchone():
        return False
    conn.execute(
        "INSERT INTO credentials(id, body, block_start, block_end, next_number, not_before, not_after, state,"
        " received_at) VALUES (?, ?, ?, ?, ?, ?, ?, 'ready', ?)",
        (credential_id, body, start, end, start, not_before, not_after, received_at))
    return True


def latest_id(conn: sqlite3.Connection) -> str | None:
    """The id of the credential with the highest block, whatever its state."""
    row = conn.execute("SELECT id FROM credentials ORDER BY block_start DESC LIMIT 1").fetchone()
    return row["id"] if row else None


def unsent_closures(conn: sqlite3.Connection) -> list[sqlite3.Row]:
    """(id, closure) of the closed credentials whose closure the cloud has not been sent."""
    return conn.execute("SELECT id, closure FROM credentials WHERE state = 'closed' AND closure IS NOT NULL"
                        " AND closure_sent_at IS NULL").fetchall()


def mark_closure_sent(conn: sqlite3.Connection, credential_id: str, sent_at: str) -> None:
    conn.execute("UPDATE credentials SET closure_sent_at = ? WHERE id = ?", (sent_at, credential_id))


def unfinished_ids(conn: sqlite3.Connection) -> list[sqlite3.Row]:
    """(id) of the credentials still active or ready (those a revocation would stop)."""
    return conn.execute("SELECT id FROM credentials WHERE state IN ('active', 'ready')").fetchall()


def revoke(conn: sqlite3.Connection, credential_id: str, closed_at: str) -> None:
    conn.execute("UPDATE credentials SET state = 'revoked', closed_at = ? WHERE id = ?", (closed_at, credential_id))
