"""Reading stored invoices for the APIs: one by id, a page of the list, the queued drafts.

Callers pass the journal's read connection (`Journal.reader`); bodies come back as stored
(compressed: `agent/store/bodies.py` unpacks them).
"""
from __future__ import annotations

import sqlite3
from typing import Any


def invoice_by_id(conn: sqlite3.Connection, invoice_id: str) -> sqlite3.Row | None:
    """(body, sync_state, sync_reason) of one invoice or draft."""
    return conn.execute("SELECT body, sync_state, sync_reason FROM invoices WHERE id = ?", (invoice_id,)).fetchone()


def sealed_id_for_request(conn: sqlite3.Connection, request_id: str) -> str | None:
    """The id of the sealed invoice of `request_id`, if there is one (a draft does not count)."""
    row = conn.execute("SELECT id FROM invoices WHERE request_id = ? AND status = 'sealed'",
                       (request_id,)).fetchone()
    return row["id"] if row is not None else None


def page(conn: sqlite3.Connection, *, status: str | None, since: str | None, before_seq: int | None,
         limit: int) -> list[sqlite3.Row]:
    """Newest first: (seq, body, sync_state, sync_reason) of at most `limit` rows with `status`,
    created at or after `since`, below the cursor `before_seq` (each filter optional)."""
    sql = "SELECT seq, body, sync_state, sync_reason FROM invoices WHERE 1=1"
    args: list[Any] = []
    if status:
        sql += " AND status = ?"
        args.append(status)
    if since:
        sql += " AND created_at >= ?"
        args.append(since)
    if before_seq is not None:
        sql += " AND seq < ?"
        args.append(before_seq)
    sql += " ORDER BY seq DESC LIMIT ?"
    args.append(limit)
    return conn.execute(sql, args).fetchall()


def queued_drafts(conn: sqlite3.Connection, limit: int) -> list[sqlite3.Row]:
    """(request_hash, body) of the oldest queued drafts, in arrival order."""
    return conn.execute("SELECT request_hash, body FROM invoices WHERE status = 'queued' ORDER BY seq LIMIT ?",
                        (limit,)).fetchall()


def sealed_count(conn: sqlite3.Connection) -> int:
    """How many sealed invoices the journal holds (`stalela verify` and `export` size their work)."""
    return conn.execute("SELECT count(*) FROM invoices WHERE status='sealed'").fetchone()[0]
