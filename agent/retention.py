"""Discarding old local copies: only invoices the cloud acknowledged, only after the retention
window, only from the start of each chain (so what remains is still one verifiable chain).

For each chain the last discarded invoice becomes its **anchor** (`chain_anchors`): verification
starts from its hash and number instead of 64 zeros. A request_id tombstone keeps retries of a
discarded sale idempotent (the POS gets 409 `discarded`, never a second fiscal number).
"""
from __future__ import annotations

import json
import logging
import sqlite3
from datetime import datetime, timedelta, timezone

log = logging.getLogger("stalela.retention")


def discard_acknowledged(conn: sqlite3.Connection, days: float, now: datetime | None = None,
                         limit: int = 10000) -> int:
    """Run inside a write transaction. Returns how many invoices were discarded."""
    now = now or datetime.now(timezone.utc)
    cutoff = (now - timedelta(days=days)).isoformat()
    total = 0
    for (chain_key,) in conn.execute("SELECT DISTINCT chain_key FROM invoices WHERE status='sealed'").fetchall():
        # The discardable prefix: oldest first, stop at the first invoice not yet acknowledged or too young.
        rows = conn.execute(
            "SELECT seq, id, request_id, request_hash, fiscal_number, authority_id, hash, sync_state, synced_at"
            " FROM invoices WHERE chain_key = ? AND status = 'sealed' ORDER BY seq LIMIT ?",
            (chain_key, limit)).fetchall()
        prefix = []
        for r in rows:
            if r["sync_state"] not in ("accepted", "duplicate") or not r["synced_at"] or r["synced_at"] > cutoff:
                break
            prefix.append(r)
        # Always keep the chain's last invoice: the journal's tip must stay readable.
        tip = conn.execute("SELECT max(seq) FROM invoices WHERE chain_key = ?", (chain_key,)).fetchone()[0]
        prefix = [r for r in prefix if r["seq"] != tip]
        if not prefix:
            continue
        anchor = conn.execute("SELECT * FROM chain_anchors WHERE chain_key = ?", (chain_key,)).fetchone()
        creds = json.loads(anchor["credentials"]) if anchor else {}
        for r in prefix:
            creds[r["authority_id"]] = r["fiscal_number"]
        last = prefix[-1]
        conn.execute(
            "INSERT INTO chain_anchors(chain_key, last_seq, last_hash, last_number, last_credential, discarded,"
            " credentials, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(chain_key) DO UPDATE SET"
            " last_seq=excluded.last_seq, last_hash=excluded.last_hash, last_number=excluded.last_number,"
            " last_credential=excluded.last_credential, discarded=chain_anchors.discarded + ?,"
            " credentials=excluded.credentials, updated_at=excluded.updated_at",
            (chain_key, last["seq"], last["hash"], last["fiscal_number"], last["authority_id"], len(prefix),
             json.dumps(creds), now.isoformat(), len(prefix)))
        conn.executemany(
            "INSERT OR IGNORE INTO discarded_requests(request_id, request_hash, invoice_id, fiscal_number, discarded_at)"
            " VALUES (?, ?, ?, ?, ?)",
            [(r["request_id"], r["request_hash"], r["id"], r["fiscal_number"], now.isoformat()) for r in prefix])
        conn.execute("DELETE FROM invoices WHERE chain_key = ? AND seq <= ? AND sync_state IN ('accepted','duplicate')",
                     (chain_key, last["seq"]))
        total += len(prefix)
        log.info("acknowledged invoices discarded", extra={"event": "retention.discarded", "chain": chain_key,
                                                           "count": len(prefix), "anchor_number": last["fiscal_number"]})
    return total
