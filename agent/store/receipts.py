"""Which print of a receipt is this? The first print of an invoice is the original; every later
print (reprint) carries DUPLICATA (agent/receipts). Counted in `receipt_prints` (migration
0005_receipts), inside a writer transaction so two terminals printing at once cannot both get the
original."""
from __future__ import annotations

import sqlite3
from datetime import datetime, timezone


def record_print(conn: sqlite3.Connection, invoice_id: str, now: datetime | None = None) -> int:
    """Count one print of `invoice_id`; returns its ordinal (1 = the original)."""
    stamp = (now or datetime.now(timezone.utc)).isoformat()
    conn.execute(
        "INSERT INTO receipt_prints(invoice_id, print_count, first_at, last_at) VALUES (?, 1, ?, ?)"
        " ON CONFLICT(invoice_id) DO UPDATE SET print_count = print_count + 1, last_at = excluded.last_at",
        (invoice_id, stamp, stamp))
    return conn.execute("SELECT print_count FROM receipt_prints WHERE invoice_id = ?", (invoice_id,)).fetchone()[0]


def print_count(conn: sqlite3.Connection, invoice_id: str) -> int:
    row = conn.execute("SELECT print_count FROM receipt_prints WHERE invoice_id = ?", (invoice_id,)).fetchone()
    return row[0] if row else 0
