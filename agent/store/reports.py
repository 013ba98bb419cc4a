"""The reports' SQL (table reports, and the invoices they sum): X, Z and A (agent/reports/core.py).

A Z is computed and inserted in one write transaction that the caller holds, so no invoice can
be sealed between the sums and the insert.
"""
from __future__ import annotations

import sqlite3
from typing import Any, Iterator


def last_in_chain(conn: sqlite3.Connection, chain_key: str) -> sqlite3.Row | None:
    """The report with the highest number in `chain_key` (every column)."""
    return conn.execute("SELECT * FROM reports WHERE chain_key = ? ORDER BY number DESC LIMIT 1",
                        (chain_key,)).fetchone()


def max_seq(conn: sqlite3.Connection) -> int:
    """The last invoice seq ever given (0 for an empty journal)."""
    return conn.execute("SELECT coalesce(max(seq), 0) FROM invoices").fetchone()[0]


def sealed_bodies(conn: sqlite3.Connection, after_seq: int, upto_seq: int | None = None) -> Iterator[Any]:
    """The stored bodies of the sealed invoices with seq in (after_seq, upto_seq], in order (lazily)."""
    sql = "SELECT body FROM invoices WHERE status = 'sealed' AND seq > ?"
    args: list[Any] = [after_seq]
    if upto_seq is not None:
        sql += " AND seq <= ?"
        args.append(upto_seq)
    for (body,) in conn.execute(sql + " ORDER BY seq", args):
        yield body


def sealed_bodies_between(conn: sqlite3.Connection, lo_text: str, hi_text: str) -> Iterator[Any]:
    """The stored bodies of the sealed invoices whose `sealed_at` text is in [lo_text, hi_text),
    in sealing order (lazily)."""
    for (body,) in conn.execute(
            "SELECT body FROM invoices WHERE status = 'sealed' AND sealed_at >= ? AND sealed_at < ? ORDER BY seq",
            (lo_text, hi_text)):
        yield body


def sealed_after(conn: sqlite3.Connection, after_seq: int) -> bool:
    """True when an invoice was sealed after seq `after_seq`."""
    return conn.execute("SELECT 1 FROM invoices WHERE status='sealed' AND seq > ? LIMIT 1",
                        (after_seq,)).fetchone() is not None


def insert_z(conn: sqlite3.Connection, *, report_id: str, number: int, chain_key: str, from_seq: int, to_seq: int,
             created_at: str, body_json: str, hash_hex: str, prev_hash: str) -> None:
    conn.execute(
        "INSERT INTO reports(id, kind, number, chain_key, from_seq, to_seq, created_at, body, hash, prev_hash)"
        " VALUES (?, 'Z', ?, ?, ?, ?, ?, ?, ?, ?)",
        (report_id, number, chain_key, from_seq, to_seq, created_at, body_json, hash_hex, prev_hash))


def report_body(conn: sqlite3.Connection, report_id: str) -> str | None:
    row = conn.execute("SELECT body FROM reports WHERE id = ?", (report_id,)).fetchone()
    return row[0] if row else None


def recent_bodies(conn: sqlite3.Connection, kind: str | None, limit: int) -> list[str]:
    """The stored bodies of the latest reports (of `kind`, when given), newest first."""
    sql = "SELECT body FROM reports"
    args: list[Any] = []
    if kind:
        sql += " WHERE kind = ?"
        args.append(kind)
    sql += " ORDER BY seq DESC LIMIT ?"
    args.append(limit)
    return [r[0] for r in conn.execute(sql, args)]


def z_reports(conn: sqlite3.Connection) -> list[sqlite3.Row]:
    """Every Z report (every column), per chain in number order (`stalela verify`)."""
    return conn.execute("SELECT * FROM reports WHERE kind = 'Z' ORDER BY chain_key, number").fetchall()


def z_reports_for_export(conn: sqlite3.Connection) -> Iterator[sqlite3.Row]:
    """(body, number, hash, prev_hash, created_at) of every Z report, per chain in number order (lazily)."""
    return conn.execute("SELECT body, number, hash, prev_hash, created_at FROM reports WHERE kind = 'Z'"
                        " ORDER BY chain_key, number")
