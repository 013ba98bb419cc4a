"""The delegated credential's side of sealing: which number the next invoice takes, and the
life of the credentials the cloud delegated (ready → active → closed).

It runs inside the journal's sealing transaction (agent/journal.py), on the writer thread or in
the sealing process, so a number is taken, used and committed together or not at all.
"""
from __future__ import annotations

import logging
import sqlite3
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from fiscal.credential import BlockClosure, DelegatedCredential
from fiscal.seal import credential_qr_part

from ..errors import SealingBlocked
from ..store import credentials as store, tx
from ..store.db import connect

log = logging.getLogger("stalela.journal")


def _now_utc() -> datetime:
    return datetime.now(timezone.utc)


class CredentialBook:
    """The outlet's delegated credentials in the journal: allocation, closure, new arrivals."""

    def __init__(self, db_path: Path, agent_key) -> None:
        self.db_path = db_path
        self._key = agent_key  # signs the closure statement of a block
        # Numbers left in the active credential after the last allocation (a hint for renewal).
        self.numbers_left: int | None = None
        # Parsed credentials and their QR part, by id: parsing costs more than the signature.
        self._creds: dict[str, tuple[DelegatedCredential, str]] = {}

    def warm_up(self, conn: sqlite3.Connection) -> None:
        """Parse the active credential ahead of the first seal (the sealing process does this)."""
        row = store.active_credential(conn)
        if row is not None:
            self.qr_part(self.parsed(row))

    def allocate(self, conn: sqlite3.Connection, now: datetime) -> tuple[DelegatedCredential, int]:
        """The next number of the active credential, moving to the ready one when it runs out.

        A used-up or expired credential is closed (signed statement of its last number) only when a
        successor takes over, in the same transaction; without one it stays as it is and sealing
        is refused with the reason, so nothing changes on disk for a refused invoice.
        """
        row = store.active_credential(conn)
        cred = None
        if row is not None:
            cred = self.parsed(row)
            number = row["next_number"]
            if number <= cred.block_end and cred.valid_at(now):
                store.set_next_number(conn, cred.id, number + 1)
                self.numbers_left = cred.block_end - number
                return cred, number
            if number <= cred.block_end and now < cred.not_before:
                # The clock reads earlier than the credential's start: a clock problem, not the
                # end of the credential. Keep it open and say so.
                raise SealingBlocked(_BLOCK_TEXT["clock"], reason="clock_before_validity")
        successor = None
        for r in store.ready_credentials(conn):
            c = self.parsed(r)
            if c.valid_at(now):
                successor = c
                break
        if successor is None:
            reason = ("no_credential" if row is None else
                      "exhausted" if row["next_number"] > row["block_end"] else "expired")
            raise SealingBlocked(_BLOCK_TEXT[reason], reason=reason)
        if cred is not None:
            self.close(conn, cred, row["next_number"] - 1, now)
        for r in store.ready_credentials(conn, before_block=successor.block_start):
            # Ready credentials that expired unused: close them as unused (the whole block is void).
            stale = self.parsed(r)
            if now >= stale.not_after:
                self.close(conn, stale, stale.block_start - 1, now)
        store.activate_credential(conn, successor.id)
        log.info("credential activated", extra={"event": "credential.activated", "credential": successor.id,
                                                "block": f"{successor.block_start}-{successor.block_end}"})
        number = successor.block_start
        store.set_next_number(conn, successor.id, number + 1)
        self.numbers_left = successor.block_end - number
        return successor, number

    def parsed(self, row) -> DelegatedCredential:
        cached = self._creds.get(row["id"])
        if cached is None:
            cred = DelegatedCredential.model_validate_json(row["body"])
            cached = self._creds[row["id"]] = (cred, credential_qr_part(cred))
        return cached[0]

    def qr_part(self, cred: DelegatedCredential) -> str:
        return self._creds[cred.id][1] if cred.id in self._creds else credential_qr_part(cred)

    def close(self, conn, cred: DelegatedCredential, last_used: int, now: datetime) -> None:
        closure = BlockClosure.make(self._key, cred.id, last_used)
        store.close_credential(conn, cred.id, now.isoformat(), closure.model_dump_json())
        log.info("credential closed", extra={"event": "credential.closed", "credential": cred.id,
                                             "last_used": last_used})

    def add(self, cred: DelegatedCredential) -> bool:
        """Store a credential fetched from the cloud (as `ready`). Goes through the writer lock."""
        conn = connect(self.db_path)
        try:
            tx.begin_immediate(conn)
            new = store.insert_credential(conn, (
                cred.id, cred.model_dump_json(), cred.block_start, cred.block_end, cred.not_before.isoformat(),
                cred.not_after.isoformat(), _now_utc().isoformat()))
            tx.commit(conn)
            return new
        finally:
            conn.close()


_BLOCK_TEXT = {
    "exhausted": "the delegated credential's block of fiscal numbers is used up and no renewed "
                 "credential is available; connect to the cloud to renew it",
    "expired": "the delegated credential has expired and no renewed credential is available; "
               "connect to the cloud to renew it",
    "clock": "the box's clock reads earlier than the start of the delegated credential's validity; "
             "set the clock right (stalela credential status shows the window)",
    "no_credential": "this agent holds no delegated credential; enroll it and fetch one "
                     "(stalela credential renew)",
}


def credential_status(conn: sqlite3.Connection, now: datetime | None = None) -> dict[str, Any]:
    """What health and the CLI show about credentials: the active one and what is ready."""
    now = now or _now_utc()
    rows = store.usable_credentials(conn)
    active = None
    ready = []
    for r in rows:
        usable = r["next_number"] <= r["block_end"] and datetime.fromisoformat(r["not_after"]) > now
        info = {"id": r["id"], "block": [r["block_start"], r["block_end"]],
                "next_number": r["next_number"],
                "remaining": max(0, r["block_end"] - r["next_number"] + 1) if usable else 0,
                "not_before": r["not_before"], "not_after": r["not_after"],
                "seconds_left": max(0, int((datetime.fromisoformat(r["not_after"]) - now).total_seconds()))}
        if r["state"] == "active" and active is None:
            active = info
        elif usable:
            ready.append(info)
    remaining = (active["remaining"] if active else 0) + sum(r["remaining"] for r in ready)
    return {"active": active, "ready": ready, "remaining": remaining}
