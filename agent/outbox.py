"""The outbox to the cloud ledger: its states and its three operations.

The outbox is the journal itself (`invoices.sync_state`), so nothing sealed can be forgotten:

* **enqueue** — inside the sealing transaction: the journal stores a sealed invoice with
  `sync_state = PENDING` (agent/journal.py), in the same row it inserts, so it is in the outbox from the
  moment it exists. An invoice the cloud itself sealed enters as `ACCEPTED`; a queued draft
  (`DRAFT`) is not in the outbox until a signer seals it.
* **take a batch** — `take_batch`: the oldest pending invoices, in sealing order.
* **mark the answers** — `mark`: the cloud's answer for a whole batch, checked first and then
  written in one transaction (all of it or none): `accepted` / `duplicate` are done, `rejected`
  is **quarantined** with the cloud's reason (kept and shown, never dropped; `retry_quarantined`
  puts them back).

The worker that moves batches to the cloud and back is agent/sync.py.
"""
from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from .store import outbox as store

PENDING = "pending"
ACCEPTED = "accepted"
DUPLICATE = "duplicate"
QUARANTINED = "quarantined"
DRAFT = "draft"
DONE_STATES = (ACCEPTED, DUPLICATE)


class BadAnswer(ValueError):
    """The cloud's answer cannot be applied to the batch (nothing was marked)."""


@dataclass(frozen=True)
class Marked:
    done: int
    quarantined: list[tuple[str, str]]  # (invoice id, the cloud's reason)


def take_batch(conn: sqlite3.Connection, limit: int, after_seq: int = 0) -> list[sqlite3.Row]:
    """The oldest pending invoices after `after_seq`, in sealing order: (seq, id, body)."""
    return store.pending_after(conn, after_seq, limit)


def mark(conn: sqlite3.Connection, rows: list[sqlite3.Row], answer: dict[str, Any]) -> Marked:
    """Apply the cloud's answer to the batch `rows`, in one transaction of its own."""
    results = answer.get("results")
    if not isinstance(results, list) or len(results) != len(rows):
        raise BadAnswer("the cloud's answer does not cover the batch (no per-invoice results)")
    now = datetime.now(timezone.utc).isoformat()
    settled: list[tuple[str, str, int]] = []
    rejected: list[tuple[str, str, int]] = []
    quarantined: list[tuple[str, str]] = []
    for row, res in zip(rows, sorted(results, key=lambda r: r.get("index", 0))):
        status = res.get("status")
        if res.get("id") not in (None, row["id"]):
            raise BadAnswer("the cloud's answer is out of order")
        if status in DONE_STATES:
            settled.append((status, now, row["seq"]))
        elif status == "rejected":
            reason = f"{res.get('reason', 'rejected')}: {res.get('detail', '')}".strip(": ")
            rejected.append((reason, now, row["seq"]))
            quarantined.append((row["id"], reason))
        else:
            raise BadAnswer(f"unknown reconciliation status {status!r}")
    # The whole answer is checked before anything is written: all of it is marked, or none.
    store.write_answers(conn, settled, rejected)
    return Marked(done=len(settled), quarantined=quarantined)


def status(conn: sqlite3.Connection) -> dict[str, Any]:
    """Pending (and since when), synced, and the quarantine with the cloud's reasons."""
    row = store.pending_summary(conn)
    quarantine = store.quarantine(conn, 100)
    qcount = store.quarantined_count(conn)
    synced = store.synced_count(conn)
    return {
        "pending": row[0],
        "oldest_pending": row[1],
        "synced": synced,
        "quarantined": qcount,
        "quarantine": [dict(r) | {"reason": r["sync_reason"]} for r in quarantine],
    }


def retry_quarantined(conn: sqlite3.Connection) -> int:
    """Put every quarantined invoice back in the queue (after the operator fixed the cause)."""
    return store.requeue_quarantined(conn)
