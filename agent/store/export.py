"""What `stalela export` reads (agent/export.py): sealed invoices in order, credentials, anchors.

The CLI holds one read transaction around all of it, so the export is one snapshot.
"""
from __future__ import annotations

import sqlite3
from typing import Any, Iterator


def sealed_for_export(conn: sqlite3.Connection, sealed_from: str | None = None,
                      sealed_before: str | None = None) -> Iterator[sqlite3.Row]:
    """(seq, chain_key, body, sealed_at) of the sealed invoices in sealing order (lazily); with
    both bounds, only those whose `sealed_at` text is in [sealed_from, sealed_before)."""
    sql = "SELECT seq, chain_key, body, sealed_at FROM invoices WHERE status = 'sealed'"
    args: list[Any] = []
    if sealed_from is not None:
        sql += " AND sealed_at >= ? AND sealed_at < ?"
        args += [sealed_from, sealed_before]
    return conn.execute(sql + " ORDER BY seq", args)


def credentials_in_order(conn: sqlite3.Connection) -> Iterator[sqlite3.Row]:
    """(body, state, closure) of every credential, in block order."""
    return conn.execute("SELECT body, state, closure FROM credentials ORDER BY block_start")


def chain_anchors_if_any(conn: sqlite3.Connection) -> list[sqlite3.Row]:
    """Every chain anchor (agent/retention.py); none in a journal made before retention existed."""
    if conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='chain_anchors'").fetchone():
        return conn.execute("SELECT * FROM chain_anchors").fetchall()
    return []
