"""The e-MCF API's phase 1 requests (table emcf_pending, migration 0009_emcf; agent/emcf/pending.py).

Writes run on connections of their own that commit with `synchronous=NORMAL` (see
agent/emcf/pending.py for why losing one to a power cut costs nothing): one used on the event
loop when SQLite's write lock is free at once (`begin_now`), one in a thread otherwise. The
journal is the authority on "was it sealed?": a request whose seal it holds is never cancelled
or expired.
"""
from __future__ import annotations

import sqlite3
from pathlib import Path

from .db import connect

_NOT_SEALED = " AND NOT EXISTS (SELECT 1 FROM invoices i WHERE i.request_id = emcf_pending.request_id)"
# A request still open: being confirmed, or pending and not expired at the time given.
_OPEN = "(state = 'confirming' OR (state = 'pending' AND expires_at > ?))"


def open_writer(db_path: Path, *, wait: bool = True) -> sqlite3.Connection:
    """A write connection of the pending requests, committing without waiting for fsync. With
    wait=False it never waits for SQLite's write lock: `begin_now` says whether it got it."""
    conn = connect(db_path)
    conn.execute("PRAGMA synchronous=NORMAL")
    if not wait:
        conn.execute("PRAGMA busy_timeout=0")
    return conn


def begin_now(conn: sqlite3.Connection) -> bool:
    """BEGIN IMMEDIATE if the write lock is free at once (on a wait=False connection); False when
    another connection (the journal's writer, the sealing process) holds it."""
    try:
        conn.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError as exc:
        if (exc.sqlite_errorcode & 0xFF) in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):  # extended codes too
            return False
        raise
    return True


def get(conn: sqlite3.Connection, uid: str, key_name: str) -> sqlite3.Row | None:
    return conn.execute("SELECT * FROM emcf_pending WHERE uid = ? AND key_name = ?", (uid, key_name)).fetchone()


def open_of_key(conn: sqlite3.Connection, key_name: str, now: float) -> list[sqlite3.Row]:
    """(uid, created_at) of the key's open requests, oldest first."""
    return conn.execute(f"SELECT uid, created_at FROM emcf_pending WHERE key_name = ? AND {_OPEN}"
                        " ORDER BY created_at", (key_name, now)).fetchall()


def forget_finished_before(conn: sqlite3.Connection, expired_before: float) -> None:
    """Delete the requests that expired before `expired_before`, unless being confirmed."""
    conn.execute("DELETE FROM emcf_pending WHERE state NOT IN ('confirming') AND expires_at < ?", (expired_before,))


def count_open(conn: sqlite3.Connection, key_name: str, now: float) -> int:
    (count,) = conn.execute(f"SELECT count(*) FROM emcf_pending WHERE key_name = ? AND {_OPEN}",
                            (key_name, now)).fetchone()
    return count


def insert(conn: sqlite3.Connection, *, uid: str, key_name: str, request_id: str, request_json: str, answer: str,
           total: str, vtotal: str, created_at: str, expires_at: float) -> None:
    conn.execute(
        "INSERT INTO emcf_pending(uid, key_name, request_id, request, answer, total, vtotal, state,"
        " created_at, expires_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, 'pending', ?, ?, ?)",
        (uid, key_name, request_id, request_json, answer, total, vtotal, created_at, expires_at, created_at))


def claim(conn: sqlite3.Connection, uid: str, now: float, stamp: str) -> int:
    """Open (at `now`) → confirming; how many rows changed (0 or 1)."""
    return conn.execute(f"UPDATE emcf_pending SET state = 'confirming', updated_at = ? WHERE uid = ? AND {_OPEN}",
                        (stamp, uid, now)).rowcount


def confirm(conn: sqlite3.Connection, uid: str, invoice_id: str, stamp: str) -> None:
    conn.execute("UPDATE emcf_pending SET state = 'confirmed', invoice_id = ?, updated_at = ? WHERE uid = ?",
                 (invoice_id, stamp, uid))


def cancel(conn: sqlite3.Connection, uid: str, now: float, stamp: str) -> int:
    """Pending, not expired at `now` and not sealed → cancelled; how many rows changed (0 or 1)."""
    return conn.execute(
        "UPDATE emcf_pending SET state = 'cancelled', updated_at = ? WHERE uid = ? AND state = 'pending' "
        "AND expires_at > ?" + _NOT_SEALED, (stamp, uid, now)).rowcount


def expire(conn: sqlite3.Connection, uid: str, now: float, stamp: str) -> None:
    """Pending, expired at `now` and not sealed → expired."""
    conn.execute("UPDATE emcf_pending SET state = 'expired', updated_at = ? WHERE uid = ? AND "
                 "state = 'pending' AND expires_at <= ?" + _NOT_SEALED, (stamp, uid, now))


def move(conn: sqlite3.Connection, uid: str, from_state: str, to_state: str, stamp: str) -> None:
    conn.execute("UPDATE emcf_pending SET state = ?, updated_at = ? WHERE uid = ? AND state = ?",
                 (to_state, stamp, uid, from_state))
