"""The outbox's SQL (the outbox itself is `invoices.sync_state`, see agent/outbox.py)."""
from __future__ import annotations

import sqlite3
from typing import Iterable

from . import tx


def pending_after(conn: sqlite3.Connection, after_seq: int, limit: int) -> list[sqlite3.Row]:
    """(seq, id, body) of the oldest pending sealed invoices after `after_seq`, in sealing order."""
    return conn.execute(
        "SELECT seq, id, body FROM invoices WHERE status='sealed' AND sync_state='pending' AND seq > ?"
        " ORDER BY seq LIMIT ?", (after_seq, limit)).fetchall()


def write_answers(conn: sqlite3.Connection, settled: Iterable[tuple[str, str, int]],
                  rejected: Iterable[tuple[str, str, int]]) -> None:
    """In one transaction of its own: `settled` (state, synced_at, seq) are done, `rejected`
    (reason, synced_at, seq) are quarantined with the cloud's reason. All of it, or none."""
    with tx.immediate(conn):
        conn.executemany("UPDATE invoices SET sync_state=?, sync_reason=NULL, synced_at=? WHERE seq=?", settled)
        conn.executemany("UPDATE invoices SET sync_state='quarantined', sync_reason=?, synced_at=? WHERE seq=?",
                         rejected)


def pending_summary(conn: sqlite3.Connection) -> tuple[int, str | None]:
    """(count, sealed_at of the first in sealing order) of the pending invoices.

    Read from the index (sync_state, seq) alone, plus one row: health asks every second, on the
    daemon's event loop, and a backlog after an outage can hold 100,000 invoices. Reading each
    pending row for `status` and `min(sealed_at)` took ≈ 60 ms there, a stall of every sale in
    flight each second; the count from the index takes ≈ 3 ms. Only sealed invoices are ever
    pending (a draft is `draft` from its insert on), so the index tells it alone."""
    count = conn.execute("SELECT count(*) FROM invoices WHERE sync_state='pending'").fetchone()[0]
    if not count:
        return 0, None
    first = conn.execute("SELECT sealed_at FROM invoices WHERE sync_state='pending' ORDER BY seq LIMIT 1").fetchone()
    return count, first[0] if first else None


def quarantine(conn: sqlite3.Connection, limit: int = 100) -> list[sqlite3.Row]:
    """(id, fiscal_number, authority_id, sync_reason) of the first quarantined invoices."""
    return conn.execute(
        "SELECT id, fiscal_number, authority_id, sync_reason FROM invoices WHERE sync_state='quarantined'"
        " ORDER BY seq LIMIT ?", (limit,)).fetchall()


def quarantined_count(conn: sqlite3.Connection) -> int:
    return conn.execute("SELECT count(*) FROM invoices WHERE sync_state='quarantined'").fetchone()[0]


def synced_count(conn: sqlite3.Connection) -> int:
    return conn.execute("SELECT count(*) FROM invoices WHERE sync_state IN ('accepted','duplicate')").fetchone()[0]


def requeue_quarantined(conn: sqlite3.Connection) -> int:
    """Every quarantined invoice back to pending; how many."""
    cur = conn.execute("UPDATE invoices SET sync_state='pending', sync_reason=NULL WHERE sync_state='quarantined'")
    return cur.rowcount
