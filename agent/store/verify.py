"""What `stalela verify` reads (agent/verify.py), on a read-only connection.

The per-invoice pass reads the rows by position (`CHECK_COLUMNS`): it is most of the work on a
large journal, and cursors are returned as they are so rows stream instead of being collected.
"""
from __future__ import annotations

import sqlite3
from typing import Iterator

# The columns of `sealed_rows`, in the order verify reads them by position.
CHECK_COLUMNS = ("seq", "id", "request_id", "fiscal_number", "authority_id", "code", "hash", "prev_hash", "type",
                 "mode", "body")
_CHECK_SELECT = (f"SELECT {', '.join(CHECK_COLUMNS)} FROM invoices WHERE status = 'sealed' AND seq >= ? AND seq < ?"
                 " ORDER BY seq")


def credentials(conn: sqlite3.Connection) -> Iterator[sqlite3.Row]:
    """Every credential, every column."""
    return conn.execute("SELECT * FROM credentials")


def credential_bodies(conn: sqlite3.Connection) -> Iterator[sqlite3.Row]:
    """(body) of every credential."""
    return conn.execute("SELECT body FROM credentials")


def sealed_chain_keys(conn: sqlite3.Connection) -> list[str]:
    """Every chain that holds a sealed invoice, in the order SQLite finds them."""
    return [r[0] for r in conn.execute("SELECT DISTINCT chain_key FROM invoices WHERE status = 'sealed'")]


def chain_anchors(conn: sqlite3.Connection) -> Iterator[sqlite3.Row]:
    """Every chain anchor left by retention (agent/retention.py), every column."""
    return conn.execute("SELECT * FROM chain_anchors")


def chain_links(conn: sqlite3.Connection, chain_key: str) -> Iterator[sqlite3.Row]:
    """(seq, id, fiscal_number, authority_id, mode, hash, prev_hash) of a chain's sealed invoices,
    in sealing order (lazily)."""
    return conn.execute("SELECT seq, id, fiscal_number, authority_id, mode, hash, prev_hash FROM invoices"
                        " WHERE chain_key = ? AND status = 'sealed' ORDER BY seq", (chain_key,))


def chain_tip_hash(conn: sqlite3.Connection, chain_key: str) -> str | None:
    """The hash the journal recorded as the chain's last link, if it has a head."""
    tip = conn.execute("SELECT last_hash FROM chains WHERE chain_key = ?", (chain_key,)).fetchone()
    return tip[0] if tip is not None else None


def sealed_span(conn: sqlite3.Connection) -> tuple[int | None, int | None, int]:
    """(lowest seq, highest seq, count) of the sealed invoices."""
    lo, hi, total = conn.execute("SELECT min(seq), max(seq), count(*) FROM invoices WHERE status = 'sealed'").fetchone()
    return lo, hi, total


def database_file(conn: sqlite3.Connection) -> str:
    """The file the connection reads (the workers of the parallel pass open it again)."""
    return conn.execute("PRAGMA database_list").fetchone()["file"]


def sealed_rows(conn: sqlite3.Connection, lo: int, hi: int) -> Iterator[sqlite3.Row]:
    """`CHECK_COLUMNS` of the sealed invoices with lo <= seq < hi, in order (lazily)."""
    return conn.execute(_CHECK_SELECT, (lo, hi))
