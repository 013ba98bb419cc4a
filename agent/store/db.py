"""The agent's SQLite database: connection settings and recorded migrations.

Durability settings are not negotiable here: WAL with `synchronous=FULL` means a COMMIT returns
only after the WAL is fsync'ed, so an invoice is on disk before the POS hears it is sealed.
"""
from __future__ import annotations

import os
import sqlite3
import stat
import threading
import weakref
from pathlib import Path

from fiscal.runtime import migrations

from ..errors import AgentError

# Each migration runs once, in list order, in its own transaction, and is recorded in
# `schema_migrations` under the number its name starts with (fiscal/runtime/migrations.py).


class JournalTooNew(AgentError):
    """The journal was upgraded by a newer agent: this one must not write to it."""

    status = 503
    title = "The journal is newer than this agent"


MIGRATIONS: list[tuple[str, str]] = [
    ("0001_journal", """
        CREATE TABLE invoices (
            seq            INTEGER PRIMARY KEY AUTOINCREMENT,  -- local sealing order (outbox order)
            id             TEXT NOT NULL UNIQUE,
            request_id     TEXT NOT NULL UNIQUE,
            request_hash   TEXT NOT NULL,
            status         TEXT NOT NULL,                      -- sealed | queued
            mode           TEXT,                               -- device | cloud | delegated
            chain_key      TEXT,
            authority_id   TEXT,
            fiscal_number  INTEGER,
            type           TEXT NOT NULL,
            code           TEXT,
            total          TEXT NOT NULL,
            sealed_at      TEXT,
            created_at     TEXT NOT NULL,
            hash           TEXT,
            prev_hash      TEXT,
            body           TEXT NOT NULL,                      -- JSON: sealed invoice (no sync) or draft
            sync_state     TEXT NOT NULL DEFAULT 'pending',
            sync_reason    TEXT,
            synced_at      TEXT,
            UNIQUE (chain_key, fiscal_number)
        );
        CREATE INDEX invoices_code ON invoices(code);
        CREATE INDEX invoices_pending ON invoices(sync_state, seq);

        -- One row per authority chain: the tip that the next invoice links to.
        CREATE TABLE chains (
            chain_key      TEXT PRIMARY KEY,
            last_hash      TEXT NOT NULL,
            last_number    INTEGER NOT NULL,
            last_timestamp TEXT,
            type_counters  TEXT NOT NULL DEFAULT '{}'
        );

        CREATE TABLE credentials (
            id             TEXT PRIMARY KEY,
            body           TEXT NOT NULL,
            block_start    INTEGER NOT NULL,
            block_end      INTEGER NOT NULL,
            next_number    INTEGER NOT NULL,
            not_before     TEXT NOT NULL,
            not_after      TEXT NOT NULL,
            state          TEXT NOT NULL,   -- ready | active | closed | revoked
            received_at    TEXT NOT NULL,
            closed_at      TEXT,
            closure        TEXT             -- signed BlockClosure JSON, once closed
        );

        CREATE TABLE api_keys (
            id           TEXT PRIMARY KEY,
            name         TEXT NOT NULL UNIQUE,
            key_hash     TEXT NOT NULL UNIQUE,
            created_at   TEXT NOT NULL,
            revoked_at   TEXT
        );

        CREATE TABLE meta (
            key   TEXT PRIMARY KEY,
            value TEXT NOT NULL
        );
    """),
    ("0002_sync", """
        ALTER TABLE credentials ADD COLUMN closure_sent_at TEXT;
        CREATE INDEX invoices_quarantined ON invoices(sync_state) WHERE sync_state = 'quarantined'
    """),
    ("0003_reports", """
        -- Sealed reports: Z closings, and X snapshots if kept. Z reports form their own chain
        -- (chain_key Z:{outlet}) and are signed with the agent key.
        CREATE TABLE reports (
            seq          INTEGER PRIMARY KEY AUTOINCREMENT,
            id           TEXT NOT NULL UNIQUE,
            kind         TEXT NOT NULL,            -- Z | X
            number       INTEGER,                  -- Z number (1, 2, ...), NULL for X
            chain_key    TEXT,
            from_seq     INTEGER NOT NULL,         -- first invoices.seq covered (exclusive lower bound + 1)
            to_seq       INTEGER NOT NULL,         -- last invoices.seq covered
            created_at   TEXT NOT NULL,
            body         TEXT NOT NULL,            -- JSON of the report as returned by the API
            hash         TEXT,
            prev_hash    TEXT,
            sync_state   TEXT NOT NULL DEFAULT 'pending',
            UNIQUE (chain_key, number)
        );
        CREATE INDEX reports_kind ON reports(kind, seq)
    """),
    ("0004_device", """
        -- An invoice in flight on the MCF: written (durably) before C0h, removed in the same
        -- transaction that stores the device's answer. One left behind after a crash means the
        -- outcome must be recovered from the device (C1h) before anything else is sent to it.
        CREATE TABLE device_intents (
            request_id   TEXT PRIMARY KEY,
            fingerprint  TEXT NOT NULL,
            fn           TEXT NOT NULL,
            job          TEXT NOT NULL,
            started_at   TEXT NOT NULL
        )
    """),
    ("0006_cloud_intents", """
        -- A request sent to the cloud signer whose answer never came: the cloud may have sealed
        -- it. Until the cloud says, that request_id may only be sealed by the cloud (asking again
        -- is idempotent there), never by another signer: one sale, one fiscal number.
        CREATE TABLE cloud_intents (
            request_id   TEXT PRIMARY KEY,
            invoice_id   TEXT NOT NULL,
            sent_at      TEXT NOT NULL
        )
    """),
    ("0005_receipts", """
        -- How many times each sealed invoice's receipt was printed: the first print is the
        -- original, every later one carries the DUPLICATA mention (agent/receipts).
        CREATE TABLE receipt_prints (
            invoice_id   TEXT PRIMARY KEY,
            print_count  INTEGER NOT NULL,
            first_at     TEXT NOT NULL,
            last_at      TEXT NOT NULL
        )
    """),
    ("0007_retention", """
        -- What verification needs once old, acknowledged invoices are discarded: per chain, the
        -- last discarded invoice's hash and number (the new start of the chain), and per
        -- credential the last number discarded.
        CREATE TABLE chain_anchors (
            chain_key     TEXT PRIMARY KEY,
            last_seq      INTEGER NOT NULL,
            last_hash     TEXT NOT NULL,
            last_number   INTEGER NOT NULL,
            last_credential TEXT,
            discarded     INTEGER NOT NULL,
            credentials   TEXT NOT NULL DEFAULT '{}',
            updated_at    TEXT NOT NULL
        );
        -- request_id tombstones keep retries idempotent after the invoice itself is discarded.
        CREATE TABLE discarded_requests (
            request_id    TEXT PRIMARY KEY,
            request_hash  TEXT NOT NULL,
            invoice_id    TEXT NOT NULL,
            fiscal_number INTEGER,
            discarded_at  TEXT NOT NULL
        )
    """),
    ("0008_compressed_bodies", """
        -- Bodies are now stored compressed (agent/store/bodies.py), so SQL can no longer look
        -- inside them: a credit note's reference gets its own column, filled for the rows so far.
        ALTER TABLE invoices ADD COLUMN reference_code TEXT;
        UPDATE invoices SET reference_code = json_extract(body, '$.reference.code')
            WHERE type IN ('FA', 'EA') AND typeof(body) = 'text';
        CREATE INDEX invoices_reference_code ON invoices(reference_code) WHERE reference_code IS NOT NULL
    """),
    ("0009_emcf", """
        -- The local e-MCF API (agent/emcf). A key may be limited to one API: v1, emcf or both
        -- (keys made before this migration keep working on both).
        ALTER TABLE api_keys ADD COLUMN api TEXT NOT NULL DEFAULT 'both';
        -- Phase 1 requests (POST /api/invoice) waiting for their confirm or cancel. Durable, so a
        -- restart between the phases loses nothing. request_id is the one the confirm seals with
        -- (exactly once), request the InvoiceRequest JSON it was computed from.
        CREATE TABLE emcf_pending (
            uid          TEXT PRIMARY KEY,
            key_name     TEXT NOT NULL,
            request_id   TEXT NOT NULL UNIQUE,
            request      TEXT NOT NULL,
            answer       TEXT NOT NULL,                      -- the phase 1 answer (JSON)
            total        TEXT NOT NULL,
            vtotal       TEXT NOT NULL,
            state        TEXT NOT NULL,                      -- pending | confirming | confirmed | cancelled | expired
            created_at   TEXT NOT NULL,
            expires_at   REAL NOT NULL,                      -- Unix time
            invoice_id   TEXT,
            updated_at   TEXT NOT NULL
        );
        CREATE INDEX emcf_pending_key ON emcf_pending(key_name, state)
    """),
    ("0010_cloud_fallback", """
        -- The deadline each online seal carries: the cloud never commits it after that time. An
        -- intent left unanswered past its deadline (and the clock margin) is 'superseded': the
        -- sale is sealed by the next signer, and the intent stays until the cloud has said whether
        -- it sealed that request before its deadline (agent/signers/cloud.py).
        ALTER TABLE cloud_intents ADD COLUMN deadline TEXT;
        ALTER TABLE cloud_intents ADD COLUMN state TEXT NOT NULL DEFAULT 'sent'
    """),
]


def connect(path: Path, *, readonly: bool = False) -> sqlite3.Connection:
    """Open the journal with the settings every connection must have."""
    if readonly:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False,
                               isolation_level=None)
    else:
        _create_private(Path(path))
        conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30,
                               factory=_WritingConnection)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA wal_autocheckpoint={WRITER_CHECKPOINT_PAGES}")
        _Checkpointer.attach(conn, Path(path))
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA busy_timeout=30000")
    conn.row_factory = sqlite3.Row
    return conn


# ------------------------------------------------------------------ checkpoints off the commit path
# A commit that takes the WAL past `wal_autocheckpoint` pages runs the checkpoint itself: it
# copies every page the WAL holds into the database file and fsyncs it before COMMIT returns.
# In a small journal those are a few pages written again and again; in a large one each invoice
# dirties leaves of its random-keyed indexes (id, code) all over the file, so that one commit in
# a hundred or so copies hundreds of scattered pages: the seal's p99 grew with the journal. A
# thread per process and journal now checkpoints (PASSIVE: it never blocks a reader or a writer)
# every CHECKPOINT_EVERY_S while writing connections are open; a writer still checkpoints by
# itself past WRITER_CHECKPOINT_PAGES (≈ 32 MB), should the thread ever fall behind.
CHECKPOINT_EVERY_S = 0.25
WRITER_CHECKPOINT_PAGES = 8000
# Held by a checkpointer while it is inside SQLite, and by os.fork() (`stalela verify` forks its
# workers): a child never starts with SQLite's own locks taken by a thread it does not have.
_in_sqlite = threading.Lock()


def _after_fork_in_child() -> None:
    global _in_sqlite
    _in_sqlite = threading.Lock()
    _Checkpointer._lock = threading.Lock()
    _Checkpointer._running = {}  # the parent's threads do not exist here


os.register_at_fork(before=lambda: _in_sqlite.acquire(), after_in_parent=lambda: _in_sqlite.release(),
                    after_in_child=_after_fork_in_child)


class _WritingConnection(sqlite3.Connection):
    """A writable journal connection: closing it lets its process's checkpointer stop."""

    on_close = None  # set by _Checkpointer.attach

    def close(self) -> None:
        super().close()
        if self.on_close is not None:
            self.on_close()


class _Checkpointer:
    _lock = threading.Lock()
    _running: dict[str, "_Checkpointer"] = {}

    def __init__(self, path: str) -> None:
        self.path = path
        self.users = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="journal-checkpoint", daemon=True)

    @classmethod
    def attach(cls, conn: _WritingConnection, path: Path) -> None:
        """Count `conn` as a user of its journal's checkpointer (started with the first user)."""
        key = str(path.resolve())
        with cls._lock:
            cp = cls._running.get(key)
            if cp is None:
                cp = cls._running[key] = cls(key)
                cp.thread.start()
            cp.users += 1
        done = threading.Event()

        def release() -> None:  # once, on close() or when the connection is collected unclosed
            if not done.is_set():
                done.set()
                cp.release()
        conn.on_close = release
        weakref.finalize(conn, release)

    def release(self) -> None:
        """One user fewer; the last one stops the thread."""
        with self._lock:
            self.users -= 1
            if self.users == 0:
                self._running.pop(self.path, None)
                self.stop.set()

    def _run(self) -> None:
        try:
            with _in_sqlite:
                conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
                conn.execute("PRAGMA synchronous=FULL")
        except sqlite3.Error:
            return  # the writers' own checkpoints remain
        try:
            while not self.stop.wait(CHECKPOINT_EVERY_S):
                try:
                    with _in_sqlite:
                        conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                except sqlite3.Error:
                    pass  # e.g. disk full or the file removed: the writers' own checkpoints remain
        finally:
            with _in_sqlite:
                conn.close()


def _create_private(path: Path) -> None:
    """Create the journal file 0600 whatever the umask, before SQLite does (SQLite would use
    0644 minus the umask, and gives its -wal and -shm files the database file's mode)."""
    if path.exists():
        return
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    os.fchmod(fd, 0o600)
    os.close(fd)


def _tighten(path: Path) -> None:
    """A journal left readable by others (made before this rule, or by hand) is made 0600."""
    for p in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        try:
            if stat.S_IMODE(p.stat().st_mode) & 0o077:
                os.chmod(p, 0o600)
        except FileNotFoundError:
            pass
        except PermissionError:
            pass  # not ours to change (another user's journal we may read): leave it as it is


def migrate(path: Path) -> list[str]:
    """Apply pending migrations (fiscal/runtime/migrations.py); returns the names applied now.

    A journal whose migrations were recorded by name in `_migrations` (before the shared runner)
    is carried over to `schema_migrations` in place, on first open.
    """
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    conn = connect(path)
    _tighten(path)
    try:
        return migrations.migrate(conn, [(_version(name), name, sql) for name, sql in MIGRATIONS],
                                  legacy_name_table="_migrations")
    except migrations.SchemaTooNew as exc:
        raise JournalTooNew(f"{path}: {exc}") from None
    finally:
        conn.close()


def _version(name: str) -> int:
    """'0006_cloud_intents' -> 6: the number is the version recorded; the list gives the order."""
    return int(name.split("_", 1)[0])
