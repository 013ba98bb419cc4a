"""The sealing path's SQL: requests, invoices, chains and intents (credentials: store/credentials.py).

Every function takes the connection of the transaction it belongs to and neither begins nor
commits: the journal's writer (agent/journal.py) owns the transaction, so a seal's lookups and
writes commit together or not at all. Readers (health, the CLI) pass the read connection.
"""
from __future__ import annotations

import sqlite3
from decimal import Decimal
from functools import lru_cache
from typing import Any

# --------------------------------------------------------------------------- requests
def find_request(conn: sqlite3.Connection, request_id: str) -> sqlite3.Row | None:
    return conn.execute("SELECT request_hash, body, status, sync_state, sync_reason FROM invoices"
                        " WHERE request_id = ?", (request_id,)).fetchone()


def discarded_request(conn: sqlite3.Connection, request_id: str) -> sqlite3.Row | None:
    """A request sealed long ago whose local copy retention discarded (its tombstone)."""
    return conn.execute("SELECT invoice_id, fiscal_number FROM discarded_requests WHERE request_id = ?",
                        (request_id,)).fetchone()


def delete_draft(conn: sqlite3.Connection, request_id: str) -> None:
    conn.execute("DELETE FROM invoices WHERE request_id = ? AND status = 'queued'", (request_id,))


# The signers that record their intent before they ask an outside authority (see their modules).
INTENT_TABLES = ("cloud_intents", "device_intents")


def cloud_intent_open(conn: sqlite3.Connection, request_id: str) -> bool:
    """A request sent to the cloud signer that may still be sealed there (not superseded)."""
    return conn.execute("SELECT 1 FROM cloud_intents WHERE request_id = ? AND state = 'sent'",
                        (request_id,)).fetchone() is not None


def record_cloud_intent(conn: sqlite3.Connection, request_id: str, invoice_id: str, deadline: str,
                        sent_at: str) -> str:
    """Before an online seal is sent: its intent, under this attempt's deadline. A retry keeps the
    first attempt's invoice id (the cloud is idempotent on it). Returns the invoice id to send."""
    row = conn.execute("SELECT invoice_id FROM cloud_intents WHERE request_id = ?", (request_id,)).fetchone()
    if row:
        conn.execute("UPDATE cloud_intents SET deadline = ?, state = 'sent' WHERE request_id = ?",
                     (deadline, request_id))
        return row["invoice_id"]
    conn.execute("INSERT INTO cloud_intents(request_id, invoice_id, sent_at, deadline) VALUES (?, ?, ?, ?)",
                 (request_id, invoice_id, sent_at, deadline))
    return invoice_id


def supersede_cloud_intent(conn: sqlite3.Connection, request_id: str) -> None:
    conn.execute("UPDATE cloud_intents SET state = 'superseded' WHERE request_id = ?", (request_id,))


def superseded_cloud_intents(conn: sqlite3.Connection) -> list[sqlite3.Row]:
    """Superseded attempts with the invoice that replaced each: (request_id, authority_id, fiscal_number)."""
    return conn.execute(
        "SELECT c.request_id, i.authority_id, i.fiscal_number FROM cloud_intents c"
        " JOIN invoices i ON i.request_id = c.request_id AND i.status = 'sealed'"
        " WHERE c.state = 'superseded'").fetchall()


def settle_intent(conn: sqlite3.Connection, table: str, request_id: str) -> None:
    conn.execute(f"DELETE FROM {_intents(table)} WHERE request_id = ?", (request_id,))


def _intents(table: str) -> str:
    if table not in INTENT_TABLES:
        raise ValueError(f"no intent table {table!r}")
    return table


# --------------------------------------------------------------------------- invoices
INVOICE_COLUMNS = frozenset({
    "id", "request_id", "request_hash", "status", "mode", "chain_key", "authority_id", "fiscal_number", "type",
    "code", "total", "sealed_at", "created_at", "hash", "prev_hash", "body", "reference_code", "sync_state",
    "synced_at"})


@lru_cache(maxsize=None)
def _insert_sql(columns: tuple[str, ...]) -> str:
    unknown = set(columns) - INVOICE_COLUMNS
    if unknown:
        raise ValueError(f"no invoice columns {sorted(unknown)}")
    return f"INSERT INTO invoices({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"


def insert_invoice(conn: sqlite3.Connection, row: dict[str, Any]) -> None:
    """One journal row: a sealed invoice (which is also its outbox entry, agent/outbox.py) or a
    queued draft."""
    conn.execute(_insert_sql(tuple(row)), tuple(row.values()))


def credit_note_original(conn: sqlite3.Connection, code: str) -> sqlite3.Row | None:
    return conn.execute("SELECT type, total FROM invoices WHERE code = ? AND status = 'sealed'", (code,)).fetchone()


def credited_so_far(conn: sqlite3.Connection, code: str) -> Decimal:
    """The total of the sealed credit notes against the original invoice `code`."""
    total = Decimal(0)
    for (amount,) in conn.execute("SELECT total FROM invoices WHERE type IN ('FA','EA') AND status='sealed'"
                                  " AND reference_code = ?", (code,)):
        total += Decimal(amount)
    return total


# --------------------------------------------------------------------------- chains
def chain_head(conn: sqlite3.Connection, chain_key: str) -> sqlite3.Row | None:
    return conn.execute("SELECT * FROM chains WHERE chain_key = ?", (chain_key,)).fetchone()


def all_chains(conn: sqlite3.Connection) -> list[sqlite3.Row]:
    return conn.execute("SELECT * FROM chains").fetchall()


def advance_chain(conn: sqlite3.Connection, chain_key: str, last_hash: str, last_number: int, last_timestamp: str,
                  type_counters: str | None = None) -> None:
    """Move a chain's head to the invoice just stored (its per-type counters too, when given)."""
    if type_counters is None:
        conn.execute(
            "INSERT INTO chains(chain_key, last_hash, last_number, last_timestamp, type_counters)"
            " VALUES (?, ?, ?, ?, '{}') ON CONFLICT(chain_key) DO UPDATE SET last_hash=excluded.last_hash,"
            " last_number=excluded.last_number, last_timestamp=excluded.last_timestamp",
            (chain_key, last_hash, last_number, last_timestamp))
    else:
        conn.execute(
            "INSERT INTO chains(chain_key, last_hash, last_number, last_timestamp, type_counters)"
            " VALUES (?, ?, ?, ?, ?) ON CONFLICT(chain_key) DO UPDATE SET last_hash=excluded.last_hash,"
            " last_number=excluded.last_number, last_timestamp=excluded.last_timestamp,"
            " type_counters=excluded.type_counters",
            (chain_key, last_hash, last_number, last_timestamp, type_counters))
