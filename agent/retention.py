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

from .store import retention as store

log = logging.getLogger("stalela.retention")


def discard_acknowledged(conn: sqlite3.Connection, days: float, now: datetime | None = None,
                         limit: int = 10000) -> int:
    """Run inside a write transaction. Returns how many invoices were discarded."""
    now = now or datetime.now(timezone.utc)
    cutoff = (now - timedelta(days=days)).isoformat()
    total = 0
    for chain_key in store.sealed_chain_keys(conn):
        # The discardable prefix: oldest first, stop at the first invoice not yet acknowledged or too young.
        rows = store.oldest_in_chain(conn, chain_key, limit)
        prefix = []
        for r in rows:
            if r["sync_state"] not in ("accepted", "duplicate") or not r["synced_at"] or r["synced_at"] > cutoff:
                break
            prefix.append(r)
        # Always keep the chain's last invoice: the journal's tip must stay readable.
        tip = store.chain_tip_seq(conn, chain_key)
        prefix = [r for r in prefix if r["seq"] != tip]
        if not prefix:
            continue
        anchor = store.anchor(conn, chain_key)
        creds = json.loads(anchor["credentials"]) if anchor else {}
        for r in prefix:
            creds[r["authority_id"]] = r["fiscal_number"]
        last = prefix[-1]
        store.move_anchor(conn, chain_key, last_seq=last["seq"], last_hash=last["hash"],
                          last_number=last["fiscal_number"], last_credential=last["authority_id"],
                          discarded=len(prefix), credentials_json=json.dumps(creds), updated_at=now.isoformat())
        store.add_tombstones(
            conn, [(r["request_id"], r["request_hash"], r["id"], r["fiscal_number"], now.isoformat()) for r in prefix])
        store.delete_acknowledged_upto(conn, chain_key, last["seq"])
        total += len(prefix)
        log.info("acknowledged invoices discarded", extra={"event": "retention.discarded", "chain": chain_key,
                                                           "count": len(prefix), "anchor_number": last["fiscal_number"]})
    return total
