"""The e-MCF simulator's state in one SQLite file, so that a restart keeps it.

Requests (pending, confirmed, cancelled, expired), each point of sale's NIM and counters, the
token secret. WAL with `synchronous=NORMAL`: the state survives the simulator's own crash or
SIGKILL (what the tests do to it), not a power cut of the machine, which a simulator need not.
One connection, used from the event loop's thread only.

Served (`group_commits`), the writes of one turn of the event loop share one transaction,
committed at the start of the next turn, and each call is answered once its writes are committed
(`durable`): a hundred points of sale calling at once paid a commit each, and the commit with the
pages it writes to the WAL (the counters, the indexes' pages) was about half of a write's cost.
Otherwise (the CLI) each write is its own transaction, as before.
"""
from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import secrets
import sqlite3
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS pos (
    nif TEXT NOT NULL, isf TEXT NOT NULL, nim TEXT NOT NULL UNIQUE, total INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (nif, isf)
);
CREATE TABLE IF NOT EXISTS type_counters (
    nif TEXT NOT NULL, isf TEXT NOT NULL, type TEXT NOT NULL, n INTEGER NOT NULL,
    PRIMARY KEY (nif, isf, type)
);
CREATE TABLE IF NOT EXISTS requests (
    uid TEXT PRIMARY KEY,
    nif TEXT NOT NULL,
    isf TEXT NOT NULL,
    rn TEXT NOT NULL,
    type TEXT NOT NULL,
    status TEXT NOT NULL,
    body TEXT NOT NULL,
    total TEXT NOT NULL,
    vtotal TEXT NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    confirm_seq INTEGER UNIQUE,
    date_time TEXT,
    code TEXT,
    counters TEXT,
    nim TEXT,
    qr_code TEXT
);
CREATE INDEX IF NOT EXISTS requests_pos ON requests (nif, isf, status, created_at);
CREATE INDEX IF NOT EXISTS requests_rn ON requests (nif, isf, rn);
-- Expiry runs before every call: it must not read the whole table.
CREATE INDEX IF NOT EXISTS requests_expiry ON requests (expires_at) WHERE status = 'pending';
"""

_ROW_COLUMNS = ("uid, nif, isf, rn, type, status, total, vtotal, created_at, expires_at, confirm_seq, date_time, "
                "code, counters, nim, qr_code")


class Store:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self.conn.row_factory = sqlite3.Row
        self.conn.execute("PRAGMA journal_mode = WAL")
        self.conn.execute("PRAGMA synchronous = NORMAL")
        self.conn.executescript(SCHEMA)
        row = self.conn.execute("SELECT value FROM meta WHERE key = 'secret'").fetchone()
        if row is None:
            self.conn.execute("INSERT INTO meta (key, value) VALUES ('secret', ?)", (secrets.token_hex(32),))
            row = self.conn.execute("SELECT value FROM meta WHERE key = 'secret'").fetchone()
        self.secret = bytes.fromhex(row["value"])
        # Kept in memory for `GET /_sim/progress`: a benchmark polls it while the table grows,
        # and counting the confirmed rows each time would cost the simulator more as it ran.
        self.normalized = self.conn.execute("SELECT COUNT(*) FROM requests WHERE status = 'confirmed'").fetchone()[0]
        # When the first pending request falls due: expiry runs before every call, and most calls
        # need not touch the table for it (0.0: not known yet, look at the next call).
        self._next_expiry = 0.0
        self._nims: dict[tuple[str, str], str] = {}  # a point of sale's NIM never changes
        self._grouping = False
        self._group: asyncio.Future | None = None  # the open group transaction's commit
        # What the open group changed, kept (or forgotten) when it commits (or rolls back).
        self._unsaved_nims: dict[tuple[str, str], str] = {}
        self._unsaved_normalized = 0

    def group_commits(self) -> None:
        """From now on, in a running event loop: the writes of a turn of the loop in one transaction."""
        self._grouping = True

    def _write(self) -> None:
        """Before a write when grouping: join the open group transaction, or open one and have it
        committed at the start of the loop's next turn (after every handler of this turn ran)."""
        if self._grouping and self._group is None:
            loop = asyncio.get_running_loop()
            self.conn.execute("BEGIN IMMEDIATE")
            self._group = loop.create_future()
            loop.call_soon(self._commit)

    def _commit(self) -> None:
        group, self._group = self._group, None
        assert group is not None
        try:
            self.conn.execute("COMMIT")
        except Exception as exc:  # the disk: every call of the group fails, none is answered as done
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
            self._unsaved_nims.clear()
            self._unsaved_normalized = 0
            if not group.done():
                group.set_exception(exc)
                group.exception()  # retrieved here too: a group no call waits for is not an error of its own
            return
        self._nims.update(self._unsaved_nims)
        self._unsaved_nims.clear()
        self.normalized += self._unsaved_normalized
        self._unsaved_normalized = 0
        if not group.done():
            group.set_result(None)

    async def durable(self) -> None:
        """Wait until what this turn wrote is committed (at once if nothing is waiting)."""
        if self._group is not None:
            await asyncio.shield(self._group)  # one call cancelled does not cancel the others' commit

    def close(self) -> None:
        if self._group is not None and self.conn.in_transaction:  # the loop ended before its commit
            self.conn.execute("COMMIT")
        self.conn.close()

    # -- points of sale ---------------------------------------------------------------------

    def nim(self, nif: str, isf: str) -> str:
        """The NIM the DGI assigned to this point of sale (assigned on first sight)."""
        nim = self._nims.get((nif, isf))
        if nim is not None:
            return nim
        row = self.conn.execute("SELECT nim FROM pos WHERE nif = ? AND isf = ?", (nif, isf)).fetchone()
        if row is not None:
            nim = row["nim"]
        else:
            digest = hashlib.sha256(f"{nif}/{isf}".encode()).hexdigest().upper()
            nim = f"EM{digest[:8]}"
            self._write()
            self.conn.execute("INSERT OR IGNORE INTO pos (nif, isf, nim) VALUES (?, ?, ?)", (nif, isf, nim))
        if not self.conn.in_transaction:  # kept once it is committed (confirm may still roll back)
            self._nims[(nif, isf)] = nim
        elif self._grouping:
            self._unsaved_nims[(nif, isf)] = nim
        return nim

    # -- requests ---------------------------------------------------------------------------

    def expire(self, now: float) -> None:
        if now < self._next_expiry:
            return  # no pending request is due yet
        self._write()
        self.conn.execute("UPDATE requests SET status = 'expired' WHERE status = 'pending' AND expires_at <= ?",
                          (now,))
        due = self.conn.execute("SELECT MIN(expires_at) FROM requests WHERE status = 'pending'").fetchone()[0]
        self._next_expiry = float("inf") if due is None else due

    def pending(self, nif: str, isf: str) -> list[sqlite3.Row]:
        return self.conn.execute("SELECT uid, rn, created_at FROM requests WHERE nif = ? AND isf = ? "
                                 "AND status = 'pending' ORDER BY created_at", (nif, isf)).fetchall()

    def pending_count(self, nif: str, isf: str) -> int:
        """How many requests of this point of sale are pending (phase 1 checks its limit with it)."""
        return self.conn.execute("SELECT COUNT(*) FROM requests WHERE nif = ? AND isf = ? AND status = 'pending'",
                                 (nif, isf)).fetchone()[0]

    def create(self, *, uid: str, nif: str, isf: str, rn: str, type_: str, body: str, total: str,
               vtotal: str, now: float, ttl: float) -> None:
        """A pending request; `body` is the phase-1 request as received (JSON text)."""
        self._write()
        self.conn.execute(
            "INSERT INTO requests (uid, nif, isf, rn, type, status, body, total, vtotal, created_at, expires_at) "
            "VALUES (?, ?, ?, ?, ?, 'pending', ?, ?, ?, ?, ?)",
            (uid, nif, isf, rn, type_, body, total, vtotal, now, now + ttl))
        self._next_expiry = min(self._next_expiry, now + ttl)

    def get(self, uid: str, nif: str, isf: str) -> sqlite3.Row | None:
        """A request of this point of sale (another's is as unknown as a made-up uid)."""
        # Every column but the phase-1 body (≈ 1 kB no answer uses): confirm reads one per invoice.
        return self.conn.execute(f"SELECT {_ROW_COLUMNS} FROM requests WHERE uid = ? AND nif = ? AND isf = ?",
                                 (uid, nif, isf)).fetchone()

    def confirm(self, row: sqlite3.Row, date_time: str, qr_stamp: str) -> dict[str, Any]:
        """Normalize a pending request: counters, code, QR, in one transaction."""
        nif, isf = row["nif"], row["isf"]
        if self._grouping:  # a savepoint in the group: this confirm alone rolls back on an error
            self._write()
            begin, end, undo = "SAVEPOINT confirm", "RELEASE confirm", ("ROLLBACK TO confirm", "RELEASE confirm")
        else:
            begin, end, undo = "BEGIN IMMEDIATE", "COMMIT", ("ROLLBACK",)
        self.conn.execute(begin)
        try:
            nim = self.nim(nif, isf)
            total = self.conn.execute("UPDATE pos SET total = total + 1 WHERE nif = ? AND isf = ? RETURNING total",
                                      (nif, isf)).fetchone()[0]
            n = self.conn.execute("INSERT INTO type_counters (nif, isf, type, n) VALUES (?, ?, ?, 1) "
                                  "ON CONFLICT (nif, isf, type) DO UPDATE SET n = n + 1 RETURNING n",
                                  (nif, isf, row["type"])).fetchone()[0]
            seq = self.conn.execute("SELECT COALESCE(MAX(confirm_seq), 0) + 1 FROM requests").fetchone()[0]
            code = self._code(row["uid"])
            elements = {"dateTime": date_time, "qrCode": f"RDCDEF01;{nim};{code};{nif};{qr_stamp}",
                        "codeDEFDGI": code, "counters": f"{n}/{total} {row['type']}", "nim": nim}
            self.conn.execute("UPDATE requests SET status = 'confirmed', confirm_seq = ?, date_time = ?, code = ?, "
                              "counters = ?, nim = ?, qr_code = ? WHERE uid = ?",
                              (seq, date_time, code, elements["counters"], nim, elements["qrCode"], row["uid"]))
        except BaseException:
            for statement in undo:
                self.conn.execute(statement)
            self._unsaved_nims.clear()  # a NIM inserted here is gone again
            raise
        self.conn.execute(end)
        if self._grouping:
            self._unsaved_normalized += 1
        else:
            self.normalized += 1
        return elements

    def set_status(self, uid: str, status: str) -> None:
        self._write()
        self.conn.execute("UPDATE requests SET status = ? WHERE uid = ?", (status, uid))

    def _code(self, uid: str) -> str:
        """24 characters A-Z/2-7, unique per request: what receipts print in groups of 4."""
        digest = hmac.digest(self.secret, uid.encode(), "sha256")  # one C call, no HMAC object
        # 24 characters are the first 120 bits: base32 of the first 15 bytes is exactly them
        # (8 characters per 5 bytes), without encoding the 17 bytes thrown away.
        return base64.b32encode(digest[:15]).decode("ascii")

    # -- for tests and `sim emcf status` ----------------------------------------------------

    def stats(self) -> dict[str, Any]:
        by_status = {r["status"]: r["n"] for r in self.conn.execute(
            "SELECT status, COUNT(*) AS n FROM requests GROUP BY status")}
        doubles = self.conn.execute(
            "SELECT COUNT(*) FROM (SELECT 1 FROM requests WHERE status = 'confirmed' "
            "GROUP BY nif, isf, rn HAVING COUNT(*) > 1)").fetchone()[0]
        points = self.conn.execute("SELECT COUNT(*) FROM pos").fetchone()[0]
        return {"requests": by_status, "normalized": by_status.get("confirmed", 0),
                "rn_normalized_twice": doubles, "points_of_sale": points}
