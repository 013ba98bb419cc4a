"""Retention's SQL (agent/retention.py): the discardable start of each chain, its anchor, the
request_id tombstones, and the delete. Called inside the writer's transaction."""
from __future__ import annotations

import sqlite3
from typing import Iterable


def sealed_chain_keys(conn: sqlite3.Connection) -> list[str]:
    return [r[0] for r in conn.execute("SELECT DISTINCT chain_key FROM invoices WHERE status='sealed'").fetchall()]


def oldest_in_chain(conn: sqlite3.Connection, chain_key: str, limit: int) -> list[sqlite3.Row]:
    """(seq, id, request_id, request_hash, fiscal_number, authority_id, hash, sync_state, synced_at)
    of a chain's oldest sealed invoices, oldest first."""
    return conn.execute(
        "SELECT seq, id, request_id, request_hash, fiscal_number, authority_id, hash, sync_state, synced_at"
        " FROM invoices WHERE chain_key = ? AND status = 'sealed' ORDER BY seq LIMIT ?",
        (chain_key, limit)).fetchall()


def chain_tip_seq(conn: sqlite3.Connection, chain_key: str) -> int | None:
    """The seq of the chain's last row (sealed or not)."""
    return conn.execute("SELECT max(seq) FROM invoices WHERE chain_key = ?", (chain_key,)).fetchone()[0]


def anchor(conn: sqlite3.Connection, chain_key: str) -> sqlite3.Row | None:
    return conn.execute("SELECT * FROM chain_anchors WHERE chain_key = ?", (chain_key,)).fetchone()


def move_anchor(conn: sqlite3.Connection, chain_key: str, *, last_seq: int, last_hash: str, last_number: int,
                last_credential: str | None, discarded: int, credentials_json: str, updated_at: str) -> None:
    """The chain now starts after `last_seq`; `discarded` more invoices are gone."""
    conn.execute(
        "INSERT INTO chain_anchors(chain_key, last_seq, last_hash, last_number, last_credential, discarded,"
        " credentials, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(chain_key) DO UPDATE SET"
        " last_seq=excluded.last_seq, last_hash=excluded.last_hash, last_number=excluded.last_number,"
        " last_credential=excluded.last_credential, discarded=chain_anchors.discarded + ?,"
        " credentials=excluded.credentials, updated_at=excluded.updated_at",
        (chain_key, last_seq, last_hash, last_number, last_credential, discarded, credentials_json, updated_at,
         discarded))


def add_tombstones(conn: sqlite3.Connection, rows: Iterable[tuple[str, str, str, int | None, str]]) -> None:
    """(request_id, request_hash, invoice_id, fiscal_number, discarded_at) of discarded invoices."""
    conn.executemany(
        "INSERT OR IGNORE INTO discarded_requests(request_id, request_hash, invoice_id, fiscal_number, discarded_at)"
        " VALUES (?, ?, ?, ?, ?)", rows)


def delete_acknowledged_upto(conn: sqlite3.Connection, chain_key: str, last_seq: int) -> None:
    conn.execute("DELETE FROM invoices WHERE chain_key = ? AND seq <= ? AND sync_state IN ('accepted','duplicate')",
                 (chain_key, last_seq))
