"""Storage of the cloud ledger: the repository interface, its SQL, and the SQLite backend.

The services only call a store's `write()` / `read()` (a `Repository`) and the methods of `Tx`.
Two backends implement them with the same SQL (the `Tx` methods below, written in the subset
SQLite and PostgreSQL share, `?` placeholders):
  * SQLite, the embedded default (`Store`: WAL, `synchronous=FULL`, one connection per worker
    thread, the WAL copied back into the database by a background thread). A write transaction
    is `BEGIN IMMEDIATE`: it holds the database's write lock, so `Tx.lock_outlet` has nothing to add.
  * PostgreSQL, for production and for several service instances on one database
    (repository_pg.py). Write transactions run at READ COMMITTED and serialize per outlet on
    `Tx.lock_outlet` (a row lock on the outlet's counter): what one process's lock did for SQLite,
    the database does for every instance. `open_store` picks the backend from the database URL.

The `ledger` table is append-only: this module has no UPDATE or DELETE statement on it, and
triggers refuse both at the database level.
"""
from __future__ import annotations

import json
import logging
import sqlite3
import threading
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any, ContextManager, Iterator, Protocol

from fiscal.protocol import chain_key
from fiscal.runtime import migrations

from .errors import Conflict
from .logs import event

# An entry's total as a number (for the KPI charts; reports compute exact amounts from the
# invoices) and how late it reached the cloud, in seconds: SQLite's spelling
# (repository_pg has PostgreSQL's).
SQLITE_TOTAL = "CAST(json_extract(invoice, '$.totals.total') AS REAL)"
SQLITE_LAG = "((julianday(recorded_at) - julianday(sealed_at)) * 86400.0)"


def kpi_days_from_ledger(total: str, lag: str, *, merchant_keys: bool = True) -> str:
    """`kpi_days` computed from the ledger as it stands: what `kpis.DayFigures` adds up entry by
    entry as the ledger grows (migration 4 fills it for an existing ledger with this, before
    version 5 gave both tables `merchant_nif`: `merchant_keys=False`)."""
    merchant = "merchant_nif, " if merchant_keys else ""
    return (f"INSERT INTO kpi_days (outlet_id, {merchant}day, invoices, net_sales, lag_sum, lag_max) "
            f"SELECT outlet_id, {merchant}substr(sealed_at, 1, 10), COUNT(*), "
            f"SUM(CASE WHEN inv_type IN ('FA', 'EA') THEN -{total} ELSE {total} END), SUM({lag}), MAX({lag}) "
            "FROM ledger WHERE state IS NULL OR state <> 'unregistered_device' "
            f"GROUP BY outlet_id, {merchant}substr(sealed_at, 1, 10);")


# The tables of one outlet's data: each has `outlet_id` and (from version 5) `merchant_nif`, the
# outlet's merchant. A distributed PostgreSQL shards them by outlet (docs/cloud-scaling.md);
# tests/cloud/test_schema_keys.py checks that no other table holds outlet data without them.
OUTLET_TABLES = ("counters", "enrollment_tokens", "agents", "devices", "credentials", "ledger", "seal_requests",
                 "flags", "rejections", "provisioning_tokens", "invoice_codes", "dgi_queues", "dgi_submissions",
                 "dgi_events", "kpi_days")
# Tables whose rows the database refuses to update (append-only): the backfill of version 5 lifts
# the refusal for its one UPDATE, inside the migration's transaction.
APPEND_ONLY = {"ledger": "the ledger is append-only", "dgi_events": "DGI events are append-only"}


def _sqlite_merchant_keys() -> str:
    """Version 5 on SQLite. ALTER TABLE cannot add a NOT NULL column without a default, and the
    ledger and agents cannot be rebuilt inside the migration's transaction (other tables refer to
    them, and foreign keys cannot be switched off there): the column gets the default '' and a
    trigger refuses '' on insert, so an INSERT that leaves it out fails as it does on PostgreSQL.
    `counters` and `dgi_queues`, which nothing refers to, are rebuilt instead: their `outlet_id`
    (a TEXT PRIMARY KEY, which SQLite lets hold NULL) becomes NOT NULL as well."""
    script = []
    for table in OUTLET_TABLES:
        if table in ("counters", "dgi_queues"):
            continue
        if table in APPEND_ONLY:
            script.append(f"DROP TRIGGER {table}_no_update;")
        script.append(f"ALTER TABLE {table} ADD COLUMN merchant_nif TEXT NOT NULL DEFAULT '';")
        script.append(f"UPDATE {table} SET merchant_nif = "
                      f"(SELECT o.merchant_nif FROM outlets o WHERE o.id = {table}.outlet_id);")
        if table in APPEND_ONLY:
            script.append(f"CREATE TRIGGER {table}_no_update BEFORE UPDATE ON {table}\n"
                          f"    BEGIN SELECT RAISE(ABORT, '{APPEND_ONLY[table]}'); END;")
        script.append(f"CREATE TRIGGER {table}_merchant_key BEFORE INSERT ON {table} WHEN NEW.merchant_nif = ''\n"
                      f"    BEGIN SELECT RAISE(ABORT, '{table}.merchant_nif is required'); END;")
    script.append("""
    CREATE TABLE counters_v5 (
        outlet_id TEXT NOT NULL PRIMARY KEY REFERENCES outlets(id),
        merchant_nif TEXT NOT NULL,
        next_number INTEGER NOT NULL
    );
    INSERT INTO counters_v5 (outlet_id, merchant_nif, next_number)
        SELECT c.outlet_id, o.merchant_nif, c.next_number FROM counters c JOIN outlets o ON o.id = c.outlet_id;
    DROP TABLE counters;
    ALTER TABLE counters_v5 RENAME TO counters;
    CREATE TABLE dgi_queues_v5 (
        outlet_id TEXT NOT NULL PRIMARY KEY,
        merchant_nif TEXT NOT NULL,
        next_seq INTEGER NOT NULL,
        lease_owner TEXT,
        lease_until TEXT,
        not_before TEXT,
        failures INTEGER NOT NULL DEFAULT 0,
        last_error TEXT,
        updated_at TEXT NOT NULL
    );
    INSERT INTO dgi_queues_v5 (outlet_id, merchant_nif, next_seq, lease_owner, lease_until, not_before, failures,
                               last_error, updated_at)
        SELECT q.outlet_id, o.merchant_nif, q.next_seq, q.lease_owner, q.lease_until, q.not_before, q.failures,
               q.last_error, q.updated_at FROM dgi_queues q JOIN outlets o ON o.id = q.outlet_id;
    DROP TABLE dgi_queues;
    ALTER TABLE dgi_queues_v5 RENAME TO dgi_queues;
    """)
    return "\n".join(script)


# Version 7, the same SQL on both backends.
AGENT_HEARTBEATS = """
ALTER TABLE agents ADD COLUMN last_heartbeat_at TEXT;
CREATE INDEX agents_outlet_heartbeat ON agents(outlet_id, last_heartbeat_at);
"""

MIGRATIONS: list[str | tuple[str, str]] = [
    """
    CREATE TABLE merchants (
        nif TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        taxpayer TEXT NOT NULL DEFAULT '{}',
        created_at TEXT NOT NULL
    );
    CREATE TABLE outlets (
        id TEXT PRIMARY KEY,
        merchant_nif TEXT NOT NULL REFERENCES merchants(nif),
        name TEXT NOT NULL,
        time_zone TEXT NOT NULL,
        isf TEXT,
        created_at TEXT NOT NULL
    );
    -- One counter per outlet: the next Stalela fiscal number (online seals and blocks).
    CREATE TABLE counters (
        outlet_id TEXT PRIMARY KEY REFERENCES outlets(id),
        next_number INTEGER NOT NULL
    );
    CREATE TABLE enrollment_tokens (
        token_hash TEXT PRIMARY KEY,
        outlet_id TEXT NOT NULL REFERENCES outlets(id),
        created_at TEXT NOT NULL,
        expires_at TEXT NOT NULL,
        used_at TEXT,
        agent_id TEXT
    );
    CREATE TABLE agents (
        id TEXT PRIMARY KEY,
        outlet_id TEXT NOT NULL REFERENCES outlets(id),
        public_key TEXT NOT NULL,
        token_hash TEXT NOT NULL UNIQUE,
        label TEXT NOT NULL,
        enrolled_at TEXT NOT NULL,
        retired_at TEXT
    );
    CREATE TABLE devices (
        mid TEXT PRIMARY KEY,
        nif TEXT NOT NULL,
        outlet_id TEXT NOT NULL REFERENCES outlets(id),
        status TEXT NOT NULL,
        firmware TEXT NOT NULL DEFAULT '{}',
        provisioned_at TEXT NOT NULL,
        last_seen TEXT
    );
    CREATE TABLE credentials (
        id TEXT PRIMARY KEY,
        outlet_id TEXT NOT NULL REFERENCES outlets(id),
        agent_id TEXT NOT NULL REFERENCES agents(id),
        request_id TEXT,
        block_start INTEGER NOT NULL,
        block_end INTEGER NOT NULL,
        not_before TEXT NOT NULL,
        not_after TEXT NOT NULL,
        document TEXT NOT NULL,
        issued_at TEXT NOT NULL,
        revoked_at TEXT,
        revoke_reason TEXT,
        closure TEXT,
        closed_last_used INTEGER,
        closed_at TEXT,
        audit_done_at TEXT,
        UNIQUE (agent_id, request_id)
    );
    CREATE INDEX credentials_outlet ON credentials(outlet_id, block_start);
    CREATE TABLE ledger (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        outlet_id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        recorded_at TEXT NOT NULL,
        mode TEXT NOT NULL,
        inv_type TEXT NOT NULL,
        authority_id TEXT NOT NULL,
        fiscal_number INTEGER NOT NULL,
        number_key TEXT NOT NULL UNIQUE,
        chain_key TEXT NOT NULL,
        sealed_at TEXT NOT NULL,
        invoice_hash TEXT NOT NULL,
        prev_ledger_hash TEXT NOT NULL,
        ledger_hash TEXT NOT NULL,
        invoice TEXT NOT NULL,
        UNIQUE (outlet_id, seq)
    );
    CREATE INDEX ledger_chain ON ledger(chain_key, id);
    CREATE INDEX ledger_chain_type ON ledger(chain_key, inv_type, id);
    CREATE INDEX ledger_authority ON ledger(authority_id, fiscal_number);
    CREATE INDEX ledger_period ON ledger(outlet_id, sealed_at);
    CREATE TRIGGER ledger_no_update BEFORE UPDATE ON ledger
        BEGIN SELECT RAISE(ABORT, 'the ledger is append-only'); END;
    CREATE TRIGGER ledger_no_delete BEFORE DELETE ON ledger
        BEGIN SELECT RAISE(ABORT, 'the ledger is append-only'); END;
    CREATE TABLE seal_requests (
        outlet_id TEXT NOT NULL,
        request_id TEXT NOT NULL,
        fingerprint TEXT NOT NULL,
        ledger_id INTEGER NOT NULL REFERENCES ledger(id),
        PRIMARY KEY (outlet_id, request_id)
    );
    CREATE TABLE flags (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        outlet_id TEXT NOT NULL,
        reason TEXT NOT NULL,
        credential_id TEXT,
        numbers TEXT NOT NULL,
        detail TEXT NOT NULL,
        created_at TEXT NOT NULL,
        resolved_at TEXT,
        resolution TEXT
    );
    CREATE INDEX flags_outlet ON flags(outlet_id, id);
    CREATE TABLE rejections (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        outlet_id TEXT NOT NULL,
        mode TEXT,
        authority_id TEXT,
        fiscal_number INTEGER,
        reason TEXT NOT NULL,
        detail TEXT NOT NULL,
        invoice_hash TEXT,
        received_at TEXT NOT NULL
    );
    CREATE INDEX rejections_outlet ON rejections(outlet_id, reason, fiscal_number);
    """,
    # 2: the cloud checks the fiscal rules itself, and only the operator binds devices.
    """
    -- Devices are bound per outlet (a MID bound by one tenant neither blocks nor reveals anything
    -- to another). Bindings made before this version were made by agents: kept, marked as such,
    -- for the operator to review (`stalela cloud devices list`).
    CREATE TABLE devices_v2 (
        outlet_id TEXT NOT NULL REFERENCES outlets(id),
        mid TEXT NOT NULL,
        nif TEXT NOT NULL,
        status TEXT NOT NULL,
        firmware TEXT NOT NULL DEFAULT '{}',
        provisioned_at TEXT NOT NULL,
        last_seen TEXT,
        bound_by TEXT NOT NULL,
        unbound_at TEXT,
        PRIMARY KEY (outlet_id, mid)
    );
    INSERT INTO devices_v2 (outlet_id, mid, nif, status, firmware, provisioned_at, last_seen, bound_by)
        SELECT outlet_id, mid, nif, status, firmware, provisioned_at, last_seen, 'agent' FROM devices;
    DROP TABLE devices;
    ALTER TABLE devices_v2 RENAME TO devices;
    -- One-time-scope tokens the operator issues so a technician can bind one MCF to one outlet.
    CREATE TABLE provisioning_tokens (
        token_hash TEXT PRIMARY KEY,
        outlet_id TEXT NOT NULL REFERENCES outlets(id),
        created_at TEXT NOT NULL,
        expires_at TEXT NOT NULL,
        mid TEXT,
        used_at TEXT
    );
    -- Each ledger entry's code, type, total and credited original, so a credit note finds its
    -- original and what was already credited against it without reading invoices. Filled for
    -- the entries so far from the stored invoices (the ledger itself is not touched).
    CREATE TABLE invoice_codes (
        outlet_id TEXT NOT NULL,
        code TEXT NOT NULL,
        inv_type TEXT NOT NULL,
        total TEXT NOT NULL,
        reference_code TEXT
    );
    INSERT INTO invoice_codes (outlet_id, code, inv_type, total, reference_code)
        SELECT outlet_id, json_extract(invoice, '$.security.code'), inv_type,
               json_extract(invoice, '$.totals.total'), json_extract(invoice, '$.reference.code')
        FROM ledger ORDER BY id;
    CREATE INDEX invoice_codes_code ON invoice_codes(outlet_id, code);
    CREATE INDEX invoice_codes_reference ON invoice_codes(outlet_id, reference_code)
        WHERE reference_code IS NOT NULL;
    -- How the cloud holds an entry: verified (its seal checked), device-attested (the MCF's
    -- elements as they are) or unregistered_device (out of the outlet's totals). Entries
    -- appended before this version have none: `ledger.entry_state` derives it from the mode.
    ALTER TABLE ledger ADD COLUMN state TEXT;
    -- What a flag is about besides gaps: the credential, MID or cloud signer of the invoice.
    ALTER TABLE flags ADD COLUMN authority_id TEXT;
    -- Each binding an agent made is for the operator to confirm (bind) or refuse (unbind).
    INSERT INTO flags (outlet_id, reason, credential_id, numbers, detail, created_at, authority_id)
        SELECT outlet_id, 'device_review', NULL, '[]',
               'device ' || mid || ' was bound by the outlet''s agent before the operator bound devices: '
               || 'confirm it (stalela cloud devices bind) or unbind it',
               strftime('%Y-%m-%dT%H:%M:%S+00:00', 'now'), mid
        FROM devices ORDER BY outlet_id, mid;
    """,
    # 3: DGI forwarding (docs/dgi-forwarding.md); repository_pg.PG_MIGRATIONS has its PostgreSQL
    # spelling. Times are UTC ISO-8601 text, compared as text.
    """
    -- One row per outlet: how far the forwarder got in the outlet's ledger (next_seq), who holds
    -- the outlet (a lease, so several cloud instances share the work without double sending),
    -- and when it may try again after a refusal of service (429, 5xx, network).
    CREATE TABLE dgi_queues (
        outlet_id TEXT PRIMARY KEY,
        next_seq INTEGER NOT NULL,
        lease_owner TEXT,
        lease_until TEXT,
        not_before TEXT,
        failures INTEGER NOT NULL DEFAULT 0,
        last_error TEXT,
        updated_at TEXT NOT NULL
    );
    -- One row per ledger entry the forwarder took up: where it is with the DGI. `uid` is stored
    -- (state `submitted`) before the confirm is sent, so that a lost answer or a crash is
    -- resolved by asking the DGI about that request, never by normalizing the invoice again.
    CREATE TABLE dgi_submissions (
        outlet_id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        ledger_id INTEGER NOT NULL,
        invoice_id TEXT NOT NULL,
        rn TEXT NOT NULL,
        state TEXT NOT NULL,
        uid TEXT,
        total TEXT,
        vtotal TEXT,
        attempts INTEGER NOT NULL DEFAULT 0,
        error_code TEXT,
        error_desc TEXT,
        updated_at TEXT NOT NULL,
        PRIMARY KEY (outlet_id, seq)
    );
    CREATE INDEX dgi_submissions_invoice ON dgi_submissions(outlet_id, invoice_id);
    CREATE INDEX dgi_submissions_state ON dgi_submissions(outlet_id, state, seq);
    -- What the DGI answered and what operators decided, beside the ledger (never in it):
    -- append-only like the ledger.
    CREATE TABLE dgi_events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        outlet_id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        ledger_id INTEGER NOT NULL,
        invoice_id TEXT NOT NULL,
        kind TEXT NOT NULL,
        uid TEXT,
        code TEXT,
        counters TEXT,
        nim TEXT,
        date_time TEXT,
        qr_code TEXT,
        error_code TEXT,
        error_desc TEXT,
        actor TEXT,
        recorded_at TEXT NOT NULL
    );
    CREATE INDEX dgi_events_entry ON dgi_events(outlet_id, seq, id);
    CREATE UNIQUE INDEX dgi_events_once ON dgi_events(outlet_id, seq) WHERE kind IN ('normalized', 'device_reported');
    -- An invoice by its id (the agent asks what the DGI said of it) before the forwarder reached
    -- it. Tx._INVOICE_ID is the same expression (PostgreSQL: repository_pg's version 3).
    CREATE INDEX ledger_invoice_id ON ledger(outlet_id, json_extract(invoice, '$.id'));
    CREATE TRIGGER dgi_events_no_update BEFORE UPDATE ON dgi_events
        BEGIN SELECT RAISE(ABORT, 'DGI events are append-only'); END;
    CREATE TRIGGER dgi_events_no_delete BEFORE DELETE ON dgi_events
        BEGIN SELECT RAISE(ABORT, 'DGI events are append-only'); END;
    """,
    # 4: the operations dashboard (cloud_stub/dashboard/, docs/operations.md "Dashboard");
    # repository_pg.PG_MIGRATIONS has the same version for PostgreSQL.
    """
    -- Read-only access for a merchant's staff: the operator issues the token, only its hash is kept.
    CREATE TABLE merchant_tokens (
        token_hash TEXT PRIMARY KEY,
        merchant_nif TEXT NOT NULL REFERENCES merchants(nif),
        created_at TEXT NOT NULL,
        expires_at TEXT NOT NULL,
        revoked_at TEXT
    );
    -- Dashboard sessions, in the database so that every instance sharing it knows them and a
    -- logout ends the session everywhere. `id_hash`: SHA-256 of the cookie's value (a stolen
    -- copy of the database holds no usable session).
    CREATE TABLE dashboard_sessions (
        id_hash TEXT PRIMARY KEY,
        role TEXT NOT NULL,
        merchant_nif TEXT,
        token_hash TEXT,
        created_at TEXT NOT NULL,
        expires_at TEXT NOT NULL
    );
    CREATE INDEX dashboard_sessions_expiry ON dashboard_sessions(expires_at);
    -- The pages' lookups: a merchant's outlets in id order, open flags per outlet, and the
    -- rejections and flags of a period (KPIs).
    CREATE INDEX outlets_merchant ON outlets(merchant_nif, id);
    CREATE INDEX flags_open ON flags(outlet_id) WHERE resolved_at IS NULL;
    CREATE INDEX flags_created ON flags(created_at);
    CREATE INDEX rejections_received ON rejections(received_at);
    CREATE INDEX devices_outlet ON devices(outlet_id, last_seen);
    -- Per outlet and UTC day of sealing: entries, net sales (credit notes subtracted, a float for
    -- the charts), and how late they reached the cloud. Kept with the ledger in the transaction
    -- that appends (kpis.py), so KPIs over every outlet read a row per outlet and day, not every
    -- entry; filled here from the ledger so far.
    CREATE TABLE kpi_days (
        outlet_id TEXT NOT NULL,
        day TEXT NOT NULL,
        invoices INTEGER NOT NULL,
        net_sales REAL NOT NULL,
        lag_sum REAL NOT NULL,
        lag_max REAL NOT NULL,
        PRIMARY KEY (outlet_id, day)
    );
    -- Covering: the KPIs of every outlet add the day's rows up from the index alone.
    CREATE INDEX kpi_days_day ON kpi_days(day, invoices, net_sales, lag_sum, lag_max);
    """ + kpi_days_from_ledger(SQLITE_TOTAL, SQLITE_LAG, merchant_keys=False),
    # 5: every table of outlet-owned data carries the outlet's merchant too (ready to shard by
    # outlet, and a merchant's rows found without a join); repository_pg has its PostgreSQL spelling.
    ("0005_outlet_merchant_keys", _sqlite_merchant_keys()),
    # 6: the ledger partitioned by month (repository_pg.PG_MIGRATIONS[5]); SQLite's ledger stays
    # one table. Recorded under the same version and name, so both backends list the same history.
    ("0006_ledger_partitions_postgresql_only", "SELECT 1;"),
    # 7: an agent's last heartbeat (POST /v1/agents/me/heartbeat): a box left on without sales
    # is still heard from, so a silent outlet means a box that is off, offline or stopped.
    ("0007_agent_heartbeats", AGENT_HEARTBEATS),
    # 8: the record of archived months (repository_pg.PG_MIGRATIONS[7]); SQLite's ledger is never
    # archived in part.
    ("0008_ledger_archives_postgresql_only", "SELECT 1;"),
]


def _row(cursor: sqlite3.Cursor, row: tuple) -> dict[str, Any]:
    return {col[0]: value for col, value in zip(cursor.description, row)}


@dataclass(frozen=True)
class LedgerEntry:
    outlet_id: str
    seq: int
    recorded_at: str
    mode: str
    inv_type: str
    authority_id: str
    fiscal_number: int
    number_key: str
    chain_key: str
    sealed_at: str
    invoice_hash: str
    prev_ledger_hash: str
    ledger_hash: str
    invoice: str
    state: str | None = None


class StoreError(RuntimeError):
    """The database cannot be opened (a bad URL, a server that does not answer): one line, no secret."""


@dataclass
class SealState:
    """`Tx.seal_state`: `done` (the request's seal_requests row) or the rest."""
    done: dict | None
    number: int | None = None
    head: dict | None = None
    last_same: dict | None = None
    tail: dict | None = None


class Repository(Protocol):
    """A store: transactions yielding a `Tx`. `Store` (SQLite) and `repository_pg.PgStore`."""

    def write(self) -> ContextManager["Tx"]:
        """A write transaction (outlet-scoped writes call `Tx.lock_outlet` first)."""

    def read(self) -> ContextManager["Tx"]:
        """A read transaction: one consistent snapshot."""

    def lookup(self) -> ContextManager["Tx"]:
        """A read of exactly one statement (a single statement is its own snapshot): on
        PostgreSQL without BEGIN and COMMIT, one round trip instead of three."""

    def run_once(self, job: str) -> ContextManager[bool]:
        """True inside when this process holds the job's lock (a periodic job runs on one
        instance at a time); False when another instance is running it."""

    def lost_race(self, exc: BaseException) -> bool:
        """Whether `exc` says a concurrent transaction won (a unique key inserted by both, a
        serialization failure): the transaction can be run again from its start."""

    def unavailable(self, exc: BaseException) -> str | None:
        """Why the database cannot serve (one line, no password) when `exc` says it is down or
        unreachable rather than refusing this statement; None for any other error."""

    def ensure_ledger_partitions(self, now: datetime) -> list[str] | None:
        """The periodic job creating the ledger's time partitions ahead (PostgreSQL); the names
        created, or None when another instance is running it."""

    def archive_ledger_month(self, month: date, now: str) -> dict:
        """Detach a past month's partition and record what it held (PostgreSQL:
        ledger_partitions.archive_month); a clear refusal where that cannot be done."""

    def ledger_archives(self) -> list[dict]:
        """The months archived so far (PostgreSQL), oldest first."""

    def close(self) -> None: ...


class Tx:
    """One transaction: the repository interface. Methods return plain dicts (rows) or scalars.

    The SQL is shared by both backends; a backend supplies the five primitives below (and
    `lock_outlet`), with `?` placeholders in the statements it receives.
    """

    # The order in which `invoice_codes` rows were inserted (SQLite's implicit rowid).
    _CODES_ORDER = "rowid"
    # Locks a row read for an update to follow (PostgreSQL); SQLite's `BEGIN IMMEDIATE` already
    # holds the database's write lock, and it knows no such clause.
    _FOR_UPDATE = ""
    # An invoice's id in the ledger, as the expression index ledger_invoice_id spells it.
    _INVOICE_ID = "json_extract(invoice, '$.id')"

    # ---- health and metrics (the same SQL on both backends)
    def ping(self) -> None:
        """One round trip to the database (health)."""
        self._one("SELECT 1 AS one")

    def open_flag_counts(self) -> list[dict[str, Any]]:
        return self._all("SELECT reason, count(*) AS n FROM flags WHERE resolved_at IS NULL GROUP BY reason")

    def dgi_queue_by_state(self) -> list[dict[str, Any]]:
        """DGI forwarding entries of every outlet by state, with the oldest `updated_at` of each."""
        return self._all("SELECT state, count(*) AS n, min(updated_at) AS oldest FROM dgi_submissions GROUP BY state")

    # An outlet's (alias `o`) bound MCFs' last contact and its agents' last heartbeat; with its newest
    # credential's issue, what its "last seen" takes beside its newest upload (issuer.last_seen).
    _SEEN_BY_DEVICES_AND_AGENTS = (
        "(SELECT MAX(d.last_seen) FROM devices d WHERE d.outlet_id = o.id AND d.unbound_at IS NULL) "
        "AS device_last_seen, "
        "(SELECT MAX(a.last_heartbeat_at) FROM agents a WHERE a.outlet_id = o.id) AS heartbeat_at ")
    _CONTACTS = ("(SELECT c.issued_at FROM credentials c WHERE c.outlet_id = o.id ORDER BY c.block_start DESC "
                 "LIMIT 1) AS issued_at, " + _SEEN_BY_DEVICES_AND_AGENTS)

    def outlets_last_contact(self) -> list[dict[str, Any]]:
        """Every outlet with the moments it was last heard from, as the dashboard's "last seen"
        reads them: its ledger's newest entry, its newest credential's issue, its bound MCFs' last
        contact, its agents' last heartbeat (None where there is none). One indexed lookup per
        outlet and column (the same as a page of /dashboard/outlets), so the metrics scrape stays
        cheap at 10,000 outlets."""
        return self._all(
            "SELECT o.id, o.merchant_nif, "
            "(SELECT l.recorded_at FROM ledger l WHERE l.outlet_id = o.id ORDER BY l.seq DESC LIMIT 1) "
            "AS last_recorded_at, "
            + self._CONTACTS + "FROM outlets o")

    def dgi_backlog(self) -> list[dict[str, Any]]:
        """Each forwarding queue (one per outlet once forwarding is on) with its position, its
        consecutive failures, the outlet's last ledger seq and when the entry at the queue's head
        was recorded: what has not reached the DGI yet, whatever holds it (the DGI down, a refused
        or missing token), which `dgi_queue_by_state` cannot see (an entry has no submission row
        until the DGI answered its first call)."""
        return self._all(
            "SELECT q.outlet_id, q.next_seq, q.failures, "
            "(SELECT MAX(l.seq) FROM ledger l WHERE l.outlet_id = q.outlet_id) AS last_seq, "
            "(SELECT l.recorded_at FROM ledger l WHERE l.outlet_id = q.outlet_id AND l.seq = q.next_seq) "
            "AS head_recorded_at "
            "FROM dgi_queues q")

    def _one(self, sql: str, *args: Any) -> dict[str, Any] | None:
        raise NotImplementedError

    def _all(self, sql: str, *args: Any) -> list[dict[str, Any]]:
        raise NotImplementedError

    def _run(self, sql: str, *args: Any) -> int:
        """Run a statement; the number of rows it changed."""
        raise NotImplementedError

    def _many(self, sql: str, rows: list[tuple]) -> None:
        """One statement over many parameter tuples."""
        raise NotImplementedError

    def _iter(self, sql: str, *args: Any) -> Iterator[dict[str, Any]]:
        """Rows streamed (an outlet's whole ledger)."""
        raise NotImplementedError

    @contextmanager
    def writes_deferred(self) -> Iterator[None]:
        """Within the block, a backend may send the multi-row writes (`_many`: ledger rows, codes,
        KPI days) without waiting for the database to apply them; it waits before its next
        statement of any other kind and at the block's end, where any error they met is raised,
        inside the transaction. SQLite applies them at once (this default): the database is in
        the process. PostgreSQL (repository_pg) overlaps them with the caller's next work."""
        yield

    def lock_outlet(self, outlet_id: str) -> None:
        """Serialize this write transaction with every other one on the outlet (its counter, its
        chains, its ledger tail, its flags) until it ends, whichever process runs them."""
        raise NotImplementedError

    def lock_merchant(self, nif: str) -> None:
        """Serialize this write transaction with every other one that binds a device of the
        merchant (a MID is bound to one of its outlets at a time), until it ends."""
        raise NotImplementedError

    def merchant_of(self, outlet_id: str) -> str | None:
        """The outlet's merchant (NIF), which every row of the outlet's data carries; read once
        per transaction (an outlet never changes merchant). None for an unknown outlet: the
        INSERT that needs it then fails on its NOT NULL column."""
        known = self.__dict__.setdefault("_merchants", {})
        nif = known.get(outlet_id)
        if nif is None:
            row = self._one("SELECT merchant_nif FROM outlets WHERE id = ?", outlet_id)
            if row is not None:
                nif = known[outlet_id] = row["merchant_nif"]
        return nif

    # -- registry ---------------------------------------------------------------------------

    def insert_merchant(self, nif: str, name: str, taxpayer: dict, now: str) -> None:
        self._run("INSERT INTO merchants (nif, name, taxpayer, created_at) VALUES (?, ?, ?, ?)",
                  nif, name, json.dumps(taxpayer, ensure_ascii=False), now)

    def merchant(self, nif: str) -> dict | None:
        return self._one("SELECT * FROM merchants WHERE nif = ?", nif)

    def insert_outlet(self, outlet_id: str, merchant_nif: str, name: str, time_zone: str,
                      isf: str | None, now: str) -> None:
        self._run("INSERT INTO outlets (id, merchant_nif, name, time_zone, isf, created_at) "
                  "VALUES (?, ?, ?, ?, ?, ?)", outlet_id, merchant_nif, name, time_zone, isf, now)
        self._run("INSERT INTO counters (outlet_id, merchant_nif, next_number) VALUES (?, ?, 1)",
                  outlet_id, merchant_nif)

    _OUTLET = ("SELECT o.id, o.name, o.time_zone, o.isf, o.created_at, o.merchant_nif, "
               "m.name AS merchant_name, m.taxpayer FROM outlets o "
               "JOIN merchants m ON m.nif = o.merchant_nif")

    def outlet(self, outlet_id: str) -> dict | None:
        return self._one(self._OUTLET + " WHERE o.id = ?", outlet_id)

    def outlets(self) -> list[dict]:
        return self._all(
            "SELECT o.id, o.name, o.time_zone, o.isf, o.merchant_nif, m.name AS merchant_name, "
            "c.next_number, "
            "(SELECT COUNT(*) FROM agents a WHERE a.outlet_id = o.id AND a.retired_at IS NULL) AS agents, "
            "(SELECT COUNT(*) FROM ledger l WHERE l.outlet_id = o.id) AS invoices, "
            "(SELECT MAX(recorded_at) FROM ledger l WHERE l.outlet_id = o.id) AS last_recorded_at, "
            "(SELECT COUNT(*) FROM flags f WHERE f.outlet_id = o.id AND f.resolved_at IS NULL) AS open_flags, "
            + self._CONTACTS +  # what makes its "last seen", as in outlets_last_contact
            "FROM outlets o JOIN merchants m ON m.nif = o.merchant_nif "
            "JOIN counters c ON c.outlet_id = o.id ORDER BY o.id")

    def record_heartbeat(self, agent_id: str, now: str) -> None:
        self._run("UPDATE agents SET last_heartbeat_at = ? WHERE id = ?", now, agent_id)

    def outlet_ids(self) -> list[str]:
        return [r["id"] for r in self._all("SELECT id FROM outlets ORDER BY id")]

    def insert_token(self, token_hash: str, outlet_id: str, now: str, expires_at: str) -> None:
        self._run("INSERT INTO enrollment_tokens (token_hash, outlet_id, merchant_nif, created_at, expires_at) "
                  "VALUES (?, ?, ?, ?, ?)", token_hash, outlet_id, self.merchant_of(outlet_id), now, expires_at)

    def token(self, token_hash: str) -> dict | None:
        return self._one("SELECT * FROM enrollment_tokens WHERE token_hash = ?", token_hash)

    def use_token(self, token_hash: str, now: str, agent_id: str) -> bool:
        """Mark a token used; False if someone else used it first (single use)."""
        return self._run("UPDATE enrollment_tokens SET used_at = ?, agent_id = ? "
                         "WHERE token_hash = ? AND used_at IS NULL", now, agent_id, token_hash) == 1

    def insert_agent(self, agent_id: str, outlet_id: str, public_key: str, token_hash: str,
                     label: str, now: str) -> None:
        self._run("INSERT INTO agents (id, outlet_id, merchant_nif, public_key, token_hash, label, enrolled_at) "
                  "VALUES (?, ?, ?, ?, ?, ?, ?)", agent_id, outlet_id, self.merchant_of(outlet_id), public_key,
                  token_hash, label, now)

    def retire_agents(self, outlet_id: str, now: str) -> list[str]:
        ids = [r["id"] for r in self._all(
            "SELECT id FROM agents WHERE outlet_id = ? AND retired_at IS NULL", outlet_id)]
        self._run("UPDATE agents SET retired_at = ? WHERE outlet_id = ? AND retired_at IS NULL",
                  now, outlet_id)
        return ids

    def agent_by_token(self, token_hash: str) -> dict | None:
        return self._one("SELECT * FROM agents WHERE token_hash = ? AND retired_at IS NULL", token_hash)

    def device(self, outlet_id: str, mid: str) -> dict | None:
        """The outlet's record of a MID, bound or not (unbound_at set)."""
        return self._one("SELECT * FROM devices WHERE outlet_id = ? AND mid = ?", outlet_id, mid)

    def bound_elsewhere(self, merchant_nif: str, mid: str, outlet_id: str) -> str | None:
        """Another outlet *of the same merchant* where the MID is bound (another tenant's never counts)."""
        row = self._one("SELECT d.outlet_id FROM devices d JOIN outlets o ON o.id = d.outlet_id "
                        "WHERE d.mid = ? AND d.outlet_id != ? AND d.unbound_at IS NULL AND o.merchant_nif = ?",
                        mid, outlet_id, merchant_nif)
        return row["outlet_id"] if row else None

    def bind_device(self, outlet_id: str, mid: str, nif: str, status: str, firmware: dict, now: str,
                    bound_by: str) -> None:
        """Bind a MID to an outlet: a new record, or a record unbound before bound again."""
        self._run("INSERT INTO devices (outlet_id, merchant_nif, mid, nif, status, firmware, provisioned_at, "
                  "last_seen, bound_by) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (outlet_id, mid) DO UPDATE SET "
                  "nif = excluded.nif, status = excluded.status, firmware = excluded.firmware, "
                  "provisioned_at = excluded.provisioned_at, bound_by = excluded.bound_by, unbound_at = NULL",
                  outlet_id, self.merchant_of(outlet_id), mid, nif, status, json.dumps(firmware, ensure_ascii=False),
                  now, now, bound_by)

    def confirm_device(self, outlet_id: str, mid: str, bound_by: str) -> None:
        """The operator takes over a binding an agent made before version 2."""
        self._run("UPDATE devices SET bound_by = ? WHERE outlet_id = ? AND mid = ?", bound_by, outlet_id, mid)

    def update_device(self, outlet_id: str, mid: str, status: str, firmware: dict, now: str) -> None:
        self._run("UPDATE devices SET status = ?, firmware = ?, last_seen = ? WHERE outlet_id = ? AND mid = ?",
                  status, json.dumps(firmware, ensure_ascii=False), now, outlet_id, mid)

    def unbind_device(self, outlet_id: str, mid: str, now: str) -> bool:
        return self._run("UPDATE devices SET unbound_at = ? WHERE outlet_id = ? AND mid = ? AND unbound_at IS NULL",
                         now, outlet_id, mid) == 1

    def touch_device(self, outlet_id: str, mid: str, now: str) -> None:
        self._run("UPDATE devices SET last_seen = ? WHERE outlet_id = ? AND mid = ? "
                  "AND (last_seen IS NULL OR last_seen < ?)", now, outlet_id, mid, now)

    def devices(self, outlet_id: str) -> list[dict]:
        return self._all("SELECT * FROM devices WHERE outlet_id = ? ORDER BY mid", outlet_id)

    def insert_provisioning_token(self, token_hash: str, outlet_id: str, now: str, expires_at: str) -> None:
        self._run("INSERT INTO provisioning_tokens (token_hash, outlet_id, merchant_nif, created_at, expires_at) "
                  "VALUES (?, ?, ?, ?, ?)", token_hash, outlet_id, self.merchant_of(outlet_id), now, expires_at)

    def provisioning_token(self, token_hash: str) -> dict | None:
        return self._one("SELECT * FROM provisioning_tokens WHERE token_hash = ?", token_hash)

    def use_provisioning_token(self, token_hash: str, mid: str, now: str) -> bool:
        """Tie the token to the MID it binds; False if it already bound another one."""
        return self._run("UPDATE provisioning_tokens SET mid = ?, used_at = COALESCE(used_at, ?) "
                         "WHERE token_hash = ? AND (mid IS NULL OR mid = ?)", mid, now, token_hash, mid) == 1

    # -- counter and credentials ------------------------------------------------------------

    def take_numbers(self, outlet_id: str, count: int) -> int:
        """Reserve `count` consecutive numbers of the outlet's counter; returns the first."""
        row = self._one("UPDATE counters SET next_number = next_number + ? WHERE outlet_id = ? "
                        "RETURNING next_number - ? AS start", count, outlet_id, count)
        if row is None:
            raise LookupError(f"outlet {outlet_id} has no counter")
        return row["start"]

    def next_number(self, outlet_id: str) -> int:
        return self._one("SELECT next_number FROM counters WHERE outlet_id = ?", outlet_id)["next_number"]

    def insert_credential(self, *, id: str, outlet_id: str, agent_id: str, request_id: str | None,
                          block_start: int, block_end: int, not_before: str, not_after: str,
                          document: str, issued_at: str) -> None:
        self._run("INSERT INTO credentials (id, outlet_id, merchant_nif, agent_id, request_id, block_start, "
                  "block_end, not_before, not_after, document, issued_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                  id, outlet_id, self.merchant_of(outlet_id), agent_id, request_id, block_start, block_end, not_before, not_after,
                  document, issued_at)

    def credential(self, credential_id: str) -> dict | None:
        return self._one("SELECT * FROM credentials WHERE id = ?", credential_id)

    def credential_documents(self, outlet_id: str, credential_ids: list[str]) -> dict[str, str]:
        """{credential id: signed document} of those of `credential_ids` issued to the outlet."""
        found: dict[str, str] = {}
        for i in range(0, len(credential_ids), 500):
            chunk = credential_ids[i:i + 500]
            for row in self._all("SELECT id, document FROM credentials WHERE outlet_id = ? AND id IN "
                                 f"({','.join('?' * len(chunk))})", outlet_id, *chunk):
                found[row["id"]] = row["document"]
        return found

    def last_issued_document(self) -> str | None:
        """The signed document of the credential issued last (any outlet), if any."""
        row = self._one("SELECT document FROM credentials ORDER BY issued_at DESC, id DESC LIMIT 1")
        return row["document"] if row else None

    def credential_by_request(self, agent_id: str, request_id: str) -> dict | None:
        return self._one("SELECT * FROM credentials WHERE agent_id = ? AND request_id = ?",
                         agent_id, request_id)

    def credentials(self, outlet_id: str) -> list[dict]:
        return self._all("SELECT * FROM credentials WHERE outlet_id = ? ORDER BY block_start", outlet_id)

    def credentials_to_audit(self, outlet_id: str) -> list[dict]:
        return self._all("SELECT * FROM credentials WHERE outlet_id = ? AND audit_done_at IS NULL "
                         "ORDER BY block_start", outlet_id)

    def close_credential(self, credential_id: str, closure: str, last_used: int, now: str) -> None:
        self._run("UPDATE credentials SET closure = ?, closed_last_used = ?, closed_at = ? "
                  "WHERE id = ? AND closure IS NULL", closure, last_used, now, credential_id)

    def revoke_credential(self, credential_id: str, at: str, reason: str) -> None:
        self._run("UPDATE credentials SET revoked_at = ?, revoke_reason = ? "
                  "WHERE id = ? AND revoked_at IS NULL", at, reason, credential_id)

    def mark_audited(self, credential_id: str, now: str) -> None:
        self._run("UPDATE credentials SET audit_done_at = ? WHERE id = ?", now, credential_id)

    # -- ledger (append-only) -----------------------------------------------------------------

    def ledger_tail(self, outlet_id: str) -> dict | None:
        return self._one("SELECT seq, ledger_hash FROM ledger WHERE outlet_id = ? "
                         "ORDER BY seq DESC LIMIT 1", outlet_id)

    def chain_head(self, chain_key: str) -> dict | None:
        return self._one("SELECT fiscal_number, invoice_hash, sealed_at, invoice FROM ledger "
                         "WHERE chain_key = ? ORDER BY id DESC LIMIT 1", chain_key)

    def chain_head_in_outlet(self, chain_key: str, outlet_id: str) -> dict | None:
        """`chain_head` counting only one outlet's entries (the device chains before version 2
        were keyed by MID alone)."""
        return self._one("SELECT fiscal_number, invoice_hash FROM ledger "
                         "WHERE chain_key = ? AND outlet_id = ? ORDER BY id DESC LIMIT 1", chain_key, outlet_id)

    def archived_anchor(self, outlet_id: str) -> dict | None:
        """{seq, ledger_hash} of the outlet's last archived entry when the entries before its
        first one in the ledger were archived (PostgreSQL: a detached time partition), else
        None: the chain of what remains is verified from there."""
        return None  # SQLite's ledger is never archived in part

    def by_number_key(self, number_key: str) -> dict | None:
        return self._one("SELECT id, outlet_id, invoice_hash, invoice FROM ledger WHERE number_key = ?",
                         number_key)

    def append(self, e: LedgerEntry) -> int:
        return self._one(
            "INSERT INTO ledger (outlet_id, seq, recorded_at, mode, inv_type, authority_id, "
            "fiscal_number, number_key, chain_key, sealed_at, invoice_hash, prev_ledger_hash, "
            "ledger_hash, invoice, state, merchant_nif) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "RETURNING id",
            e.outlet_id, e.seq, e.recorded_at, e.mode, e.inv_type, e.authority_id, e.fiscal_number,
            e.number_key, e.chain_key, e.sealed_at, e.invoice_hash, e.prev_ledger_hash,
            e.ledger_hash, e.invoice, e.state, self.merchant_of(e.outlet_id))["id"]

    def by_number_keys(self, number_keys: list[str]) -> dict[str, dict]:
        """`by_number_key` for many keys at once: {number_key: {outlet_id, invoice_hash}} of those found."""
        found: dict[str, dict] = {}
        for i in range(0, len(number_keys), 500):
            chunk = number_keys[i:i + 500]
            for row in self._all("SELECT number_key, outlet_id, invoice_hash FROM ledger WHERE number_key IN "
                                 f"({','.join('?' * len(chunk))})", *chunk):
                found[row["number_key"]] = {"outlet_id": row["outlet_id"], "invoice_hash": row["invoice_hash"]}
        return found

    def append_many(self, rows: list[tuple]) -> None:
        """Append ledger rows, each a tuple in `LedgerEntry` field order, with one prepared statement."""
        self._many(
            "INSERT INTO ledger (outlet_id, seq, recorded_at, mode, inv_type, authority_id, "
            "fiscal_number, number_key, chain_key, sealed_at, invoice_hash, prev_ledger_hash, "
            "ledger_hash, invoice, state, merchant_nif) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            self._with_merchant(rows))

    def _with_merchant(self, rows: list[tuple]) -> list[tuple]:
        """Rows whose first value is an outlet id, with the outlet's merchant appended."""
        return [(*row, self.merchant_of(row[0])) for row in rows]

    def insert_codes(self, rows: list[tuple]) -> None:
        """Index appended entries: (outlet_id, code, inv_type, total, reference_code) each."""
        self._many("INSERT INTO invoice_codes (outlet_id, code, inv_type, total, reference_code, merchant_nif) "
                   "VALUES (?, ?, ?, ?, ?, ?)", self._with_merchant(rows))

    def invoice_by_code(self, outlet_id: str, code: str) -> dict | None:
        """The outlet's first ledger entry with this code: {inv_type, total}."""
        return self._one("SELECT inv_type, total FROM invoice_codes WHERE outlet_id = ? AND code = ? "
                         f"ORDER BY {self._CODES_ORDER} LIMIT 1", outlet_id, code)

    def credited_totals(self, outlet_id: str, code: str) -> list[str]:
        """The totals of the outlet's credit notes that refer to `code`."""
        return [r["total"] for r in self._all(
            "SELECT total FROM invoice_codes WHERE outlet_id = ? AND reference_code = ? "
            "AND inv_type IN ('FA', 'EA')", outlet_id, code)]

    def count_numbers_of_authority(self, authority_id: str, lo: int, hi: int) -> int:
        return self._one("SELECT COUNT(*) AS n FROM ledger WHERE authority_id = ? AND fiscal_number BETWEEN ? AND ?",
                         authority_id, lo, hi)["n"]

    def ledger_invoice(self, ledger_id: int) -> str:
        return self._one("SELECT invoice FROM ledger WHERE id = ?", ledger_id)["invoice"]

    def ledger_page(self, outlet_id: str, after: int, limit: int) -> list[dict]:
        return self._all("SELECT seq, recorded_at, mode, inv_type, authority_id, fiscal_number, "
                         "chain_key, invoice_hash, prev_ledger_hash, ledger_hash, invoice, state FROM ledger "
                         "WHERE outlet_id = ? AND seq > ? ORDER BY seq LIMIT ?", outlet_id, after, limit)

    def ledger_rows(self, outlet_id: str) -> Iterator[dict]:
        yield from self._iter("SELECT * FROM ledger WHERE outlet_id = ? ORDER BY seq", outlet_id)

    def ledger_in_period(self, outlet_id: str, start: str, end: str) -> list[dict]:
        """The entries that count in the outlet's totals (not those of an unregistered device)."""
        return self._all("SELECT mode, inv_type, invoice FROM ledger WHERE outlet_id = ? "
                         "AND sealed_at >= ? AND sealed_at < ? AND (state IS NULL OR state <> 'unregistered_device') "
                         "ORDER BY seq", outlet_id, start, end)

    def excluded_in_period(self, outlet_id: str, start: str, end: str) -> dict[str, int]:
        """{state: count} of the entries kept out of the outlet's totals in the period."""
        return {r["state"]: r["n"] for r in self._all(
            "SELECT state, COUNT(*) AS n FROM ledger WHERE outlet_id = ? AND sealed_at >= ? AND sealed_at < ? "
            "AND state = 'unregistered_device' GROUP BY state", outlet_id, start, end)}

    def last_of_type(self, chain_key: str, inv_type: str) -> dict | None:
        return self._one("SELECT invoice FROM ledger WHERE chain_key = ? AND inv_type = ? "
                         "ORDER BY id DESC LIMIT 1", chain_key, inv_type)

    def numbers_of_authority(self, authority_id: str) -> set[int]:
        return {r["fiscal_number"] for r in self._all(
            "SELECT fiscal_number FROM ledger WHERE authority_id = ?", authority_id)}

    def highest_delegated_number(self, outlet_id: str) -> int:
        """The highest number the outlet's agent is known to have used (accepted or chain-rejected)."""
        # Numbers increase along the chain, so the head holds the chain's highest number.
        row = self._one(
            "SELECT MAX(n) AS n FROM ("
            " SELECT * FROM (SELECT fiscal_number AS n FROM ledger WHERE chain_key = ?"
            "  ORDER BY id DESC LIMIT 1) head"
            " UNION ALL SELECT MAX(fiscal_number) FROM rejections"
            "  WHERE outlet_id = ? AND reason = 'chain_break' AND mode = 'delegated') highest",
            chain_key("delegated", outlet_id=outlet_id), outlet_id)
        return row["n"] or 0

    # -- online seal idempotency ------------------------------------------------------------

    def seal_request(self, outlet_id: str, request_id: str) -> dict | None:
        return self._one("SELECT fingerprint, ledger_id FROM seal_requests "
                         "WHERE outlet_id = ? AND request_id = ?", outlet_id, request_id)

    def insert_seal_request(self, outlet_id: str, request_id: str, fingerprint: str, ledger_id: int) -> None:
        self._run("INSERT INTO seal_requests (outlet_id, merchant_nif, request_id, fingerprint, ledger_id) "
                  "VALUES (?, ?, ?, ?, ?)", outlet_id, self.merchant_of(outlet_id), request_id, fingerprint, ledger_id)

    def seal_state(self, outlet_id: str, request_id: str, chain_key: str, inv_type: str) -> SealState:
        """What an online seal reads under the outlet's lock: the request's earlier seal if any;
        otherwise the number taken for it (the counter moves: the caller must hold the outlet's
        lock, and a seal that does not go on rolls the transaction back), the chain's head, the
        chain's last entry of the same type and the outlet's ledger tail. PostgreSQL does it in
        one statement (repository_pg.PgTx); here, one query each."""
        done = self.seal_request(outlet_id, request_id)
        if done is not None:
            return SealState(done=done)
        return SealState(done=None, number=self.take_numbers(outlet_id, 1), head=self.chain_head(chain_key),
                         last_same=self.last_of_type(chain_key, inv_type), tail=self.ledger_tail(outlet_id))

    def append_sealed(self, entry: "LedgerEntry", code: tuple, days: list[tuple], request_id: str,
                      fingerprint: str) -> int:
        """An online seal's writes: its ledger entry, `invoice_codes` row, `kpi_days` figures and
        request record; returns the entry's id. PostgreSQL does it in one statement."""
        ledger_id = self.append(entry)
        self.insert_codes([code])
        if days:
            self.add_kpi_days(days)
        self.insert_seal_request(entry.outlet_id, request_id, fingerprint, ledger_id)
        return ledger_id

    # -- flags and rejections ---------------------------------------------------------------

    def insert_flag(self, outlet_id: str, reason: str, credential_id: str | None, numbers: list,
                    detail: str, now: str, authority_id: str | None = None) -> int:
        return self._one(
            "INSERT INTO flags (outlet_id, merchant_nif, reason, credential_id, numbers, detail, created_at, "
            "authority_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
            outlet_id, self.merchant_of(outlet_id), reason, credential_id, json.dumps(numbers), detail, now, authority_id)["id"]

    def open_flags_of(self, outlet_id: str, reason: str, authority_id: str) -> list[dict]:
        return self._all("SELECT * FROM flags WHERE outlet_id = ? AND reason = ? AND authority_id = ? "
                         "AND resolved_at IS NULL", outlet_id, reason, authority_id)

    def flags(self, outlet_id: str | None = None, open_only: bool = False) -> list[dict]:
        sql = "SELECT * FROM flags WHERE 1 = 1"
        args: list[Any] = []
        if outlet_id is not None:
            sql += " AND outlet_id = ?"
            args.append(outlet_id)
        if open_only:
            sql += " AND resolved_at IS NULL"
        return self._all(sql + " ORDER BY id", *args)

    def set_flag_numbers(self, flag_id: int, numbers: list) -> None:
        self._run("UPDATE flags SET numbers = ? WHERE id = ? AND resolved_at IS NULL", json.dumps(numbers), flag_id)

    def resolve_flag(self, flag_id: int, now: str, resolution: str) -> None:
        self._run("UPDATE flags SET resolved_at = ?, resolution = ? WHERE id = ? AND resolved_at IS NULL",
                  now, resolution, flag_id)

    def insert_rejection(self, outlet_id: str, mode: str | None, authority_id: str | None,
                         fiscal_number: int | None, reason: str, detail: str,
                         invoice_hash: str | None, now: str) -> None:
        self._run("INSERT INTO rejections (outlet_id, merchant_nif, mode, authority_id, fiscal_number, reason, "
                  "detail, invoice_hash, received_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                  outlet_id, self.merchant_of(outlet_id), mode, authority_id, fiscal_number, reason, detail, invoice_hash, now)

    def rejections(self, outlet_id: str, limit: int) -> list[dict]:
        return self._all("SELECT * FROM rejections WHERE outlet_id = ? ORDER BY id DESC LIMIT ?",
                         outlet_id, limit)

    # -- DGI forwarding (forwarding.py) --------------------------------------------------------

    def dgi_add_queues(self, now: str) -> None:
        """A queue for each outlet that has none yet, starting at its first ledger entry."""
        # ON CONFLICT: another instance may add the same queue between the check and the insert.
        self._run("INSERT INTO dgi_queues (outlet_id, merchant_nif, next_seq, updated_at) "
                  "SELECT o.id, o.merchant_nif, 1, ? FROM outlets o WHERE NOT EXISTS "
                  "(SELECT 1 FROM dgi_queues q WHERE q.outlet_id = o.id) "
                  "ON CONFLICT (outlet_id) DO NOTHING", now)

    def dgi_claimable(self, outlet_ids: list[str], now: str, limit: int) -> list[str]:
        """Outlets among `outlet_ids` with work (a ledger entry not yet taken up, or a released
        one), not leased by anyone and not waiting out a back-off."""
        found: list[str] = []
        for i in range(0, len(outlet_ids), 500):
            chunk = outlet_ids[i:i + 500]
            found += [r["outlet_id"] for r in self._all(
                "SELECT q.outlet_id FROM dgi_queues q WHERE q.outlet_id IN "
                f"({','.join('?' * len(chunk))}) "
                "AND (q.lease_until IS NULL OR q.lease_until < ?) "
                "AND (q.not_before IS NULL OR q.not_before <= ?) "
                "AND (EXISTS (SELECT 1 FROM ledger l WHERE l.outlet_id = q.outlet_id AND l.seq >= q.next_seq) "
                "  OR EXISTS (SELECT 1 FROM dgi_submissions s WHERE s.outlet_id = q.outlet_id "
                "             AND s.state = 'released')) "
                "ORDER BY q.updated_at LIMIT ?", *chunk, now, now, limit)]
        return found[:limit]

    def dgi_take_lease(self, outlet_id: str, owner: str, now: str, until: str) -> bool:
        return self._run("UPDATE dgi_queues SET lease_owner = ?, lease_until = ? WHERE outlet_id = ? "
                         "AND (lease_until IS NULL OR lease_until < ? OR lease_owner = ?)",
                         owner, until, outlet_id, now, owner) == 1

    def dgi_renew_lease(self, outlet_id: str, owner: str, until: str) -> bool:
        return self._run("UPDATE dgi_queues SET lease_until = ? WHERE outlet_id = ? AND lease_owner = ?",
                         until, outlet_id, owner) == 1

    def dgi_drop_lease(self, outlet_id: str, owner: str, now: str) -> None:
        self._run("UPDATE dgi_queues SET lease_owner = NULL, lease_until = NULL, updated_at = ? "
                  "WHERE outlet_id = ? AND lease_owner = ?", now, outlet_id, owner)

    def dgi_queue(self, outlet_id: str) -> dict | None:
        return self._one("SELECT * FROM dgi_queues WHERE outlet_id = ?", outlet_id)

    def dgi_lock_queue(self, outlet_id: str) -> dict | None:
        """The outlet's queue, its row locked to the end of the transaction: the forwarding
        writes of one outlet (and an operator's release) run one at a time on PostgreSQL, as
        every write does on SQLite, so a lease checked here holds until the commit."""
        queue = self._one("SELECT * FROM dgi_queues WHERE outlet_id = ?" + self._FOR_UPDATE, outlet_id)
        if queue is not None:  # the row carries the outlet's merchant: merchant_of needs no query
            self.__dict__.setdefault("_merchants", {})[outlet_id] = queue["merchant_nif"]
        return queue

    _QUEUE_AFTER = ("lease_owner, next_seq, EXISTS (SELECT 1 FROM dgi_submissions s "
                    "WHERE s.outlet_id = dgi_queues.outlet_id AND s.state = 'released') AS released")

    def dgi_queue_after(self, outlet_id: str) -> dict | None:
        """The queue's lease and next entry, and whether an operator released an entry (what
        the forwarder needs after each recording to go on with the entries it read ahead)."""
        return self._one(f"SELECT {self._QUEUE_AFTER} FROM dgi_queues WHERE outlet_id = ?", outlet_id)

    def dgi_queues(self) -> list[dict]:
        return self._all("SELECT * FROM dgi_queues ORDER BY outlet_id")

    def dgi_back_off(self, outlet_id: str, owner: str, not_before: str, error: str, now: str) -> None:
        self._run("UPDATE dgi_queues SET not_before = ?, failures = failures + 1, last_error = ?, "
                  "updated_at = ? WHERE outlet_id = ? AND lease_owner = ?", not_before, error, now, outlet_id, owner)

    def dgi_advance(self, outlet_id: str, owner: str, seq: int, now: str) -> dict | None:
        """Move the queue past `seq` (fenced by the lease; clears the back-off), then what
        `dgi_queue_after` tells: returned by the UPDATE itself when the queue moved (one
        statement per recording instead of two), read after it otherwise."""
        moved = self._one(f"UPDATE dgi_queues SET next_seq = ?, failures = 0, last_error = NULL, not_before = NULL, "
                          f"updated_at = ? WHERE outlet_id = ? AND lease_owner = ? AND next_seq <= ? "
                          f"RETURNING {self._QUEUE_AFTER}", seq + 1, now, outlet_id, owner, seq)
        return moved if moved is not None else self.dgi_queue_after(outlet_id)

    def dgi_clear_failures(self, outlet_id: str, now: str) -> None:
        self._run("UPDATE dgi_queues SET failures = 0, last_error = NULL, not_before = NULL, updated_at = ? "
                  "WHERE outlet_id = ?", now, outlet_id)

    def ledger_entries_from(self, outlet_id: str, seq: int, limit: int) -> list[dict]:
        return self._all("SELECT id, seq, mode, invoice FROM ledger WHERE outlet_id = ? AND seq >= ? "
                         "ORDER BY seq LIMIT ?", outlet_id, seq, limit)

    def ledger_entry(self, outlet_id: str, seq: int) -> dict | None:
        return self._one("SELECT id, seq, mode, invoice FROM ledger WHERE outlet_id = ? AND seq = ?", outlet_id, seq)

    def dgi_submission(self, outlet_id: str, seq: int) -> dict | None:
        return self._one("SELECT * FROM dgi_submissions WHERE outlet_id = ? AND seq = ?", outlet_id, seq)

    def dgi_submissions_between(self, outlet_id: str, first: int, last: int) -> list[dict]:
        return self._all("SELECT * FROM dgi_submissions WHERE outlet_id = ? AND seq BETWEEN ? AND ?",
                         outlet_id, first, last)

    def dgi_released(self, outlet_id: str) -> dict | None:
        return self._one("SELECT * FROM dgi_submissions WHERE outlet_id = ? AND state = 'released' "
                         "ORDER BY seq LIMIT 1", outlet_id)

    def dgi_submitted_uids(self, outlet_id: str) -> set[str]:
        return {r["uid"] for r in self._all("SELECT uid FROM dgi_submissions WHERE outlet_id = ? "
                                            "AND state = 'submitted' AND uid IS NOT NULL", outlet_id)}

    def dgi_put_submission(self, *, outlet_id: str, seq: int, ledger_id: int, invoice_id: str, rn: str,
                           state: str, now: str, uid: str | None = None, total: str | None = None,
                           vtotal: str | None = None, error_code: str | None = None,
                           error_desc: str | None = None) -> None:
        """Insert or move a submission to `state` (attempts count the times it went to the DGI)."""
        self._run("INSERT INTO dgi_submissions (outlet_id, merchant_nif, seq, ledger_id, invoice_id, rn, state, uid, "
                  "total, vtotal, attempts, error_code, error_desc, updated_at) "
                  "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                  "ON CONFLICT (outlet_id, seq) DO UPDATE SET state = excluded.state, uid = excluded.uid, "
                  "total = excluded.total, vtotal = excluded.vtotal, "
                  "attempts = dgi_submissions.attempts + excluded.attempts, error_code = excluded.error_code, "
                  "error_desc = excluded.error_desc, updated_at = excluded.updated_at",
                  outlet_id, self.merchant_of(outlet_id), seq, ledger_id, invoice_id, rn, state, uid, total, vtotal,
                  1 if state == "submitted" else 0, error_code, error_desc, now)

    def dgi_add_event(self, *, outlet_id: str, seq: int, ledger_id: int, invoice_id: str, kind: str, now: str,
                      uid: str | None = None, code: str | None = None, counters: str | None = None,
                      nim: str | None = None, date_time: str | None = None, qr_code: str | None = None,
                      error_code: str | None = None, error_desc: str | None = None,
                      actor: str | None = None, once: bool = False) -> bool:
        """Append an event; `once`: none if the entry has its final event already (dgi_events_once).
        ON CONFLICT rather than catching the error: on PostgreSQL a failed statement spoils the
        whole transaction. False if nothing was added."""
        return self._run("INSERT INTO dgi_events (outlet_id, merchant_nif, seq, ledger_id, invoice_id, kind, uid, code, "
                         "counters, nim, date_time, qr_code, error_code, error_desc, actor, recorded_at) "
                         "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                         + (" ON CONFLICT DO NOTHING" if once else ""),
                         outlet_id, self.merchant_of(outlet_id), seq, ledger_id, invoice_id, kind, uid, code, counters, nim, date_time, qr_code,
                         error_code, error_desc, actor, now) == 1

    def dgi_state_counts(self, outlet_id: str) -> dict[str, int]:
        return {r["state"]: r["n"] for r in self._all(
            "SELECT state, COUNT(*) AS n FROM dgi_submissions WHERE outlet_id = ? GROUP BY state", outlet_id)}

    def dgi_quarantined(self, outlet_id: str | None, limit: int) -> list[dict]:
        sql = "SELECT * FROM dgi_submissions WHERE state = 'quarantined'"
        args: list[Any] = []
        if outlet_id is not None:
            sql += " AND outlet_id = ?"
            args.append(outlet_id)
        return self._all(sql + " ORDER BY outlet_id, seq LIMIT ?", *args, limit)

    def dgi_release(self, outlet_id: str, seq: int, now: str) -> bool:
        return self._run("UPDATE dgi_submissions SET state = 'released', updated_at = ? "
                         "WHERE outlet_id = ? AND seq = ? AND state = 'quarantined'", now, outlet_id, seq) == 1

    def dgi_submission_by_invoice(self, outlet_id: str, invoice_id: str) -> dict | None:
        return self._one("SELECT * FROM dgi_submissions WHERE outlet_id = ? AND invoice_id = ? "
                         "ORDER BY seq LIMIT 1", outlet_id, invoice_id)

    def dgi_answer(self, outlet_id: str, seq: int) -> dict | None:
        """The DGI's elements for an entry: its `normalized` event."""
        return self._one("SELECT * FROM dgi_events WHERE outlet_id = ? AND seq = ? AND kind = 'normalized'",
                         outlet_id, seq)

    def ledger_seq_of_invoice(self, outlet_id: str, invoice_id: str) -> int | None:
        # Served by the expression index ledger_invoice_id (`_INVOICE_ID`, each backend's
        # spelling); only for an invoice the forwarder has not reached yet, which has no
        # dgi_submissions row to find it by.
        row = self._one(f"SELECT seq FROM ledger WHERE outlet_id = ? AND {self._INVOICE_ID} = ?",
                        outlet_id, invoice_id)
        return row["seq"] if row else None

    def dgi_next_seq(self, outlet_id: str) -> int:
        row = self._one("SELECT next_seq FROM dgi_queues WHERE outlet_id = ?", outlet_id)
        return row["next_seq"] if row else 1

    def ledger_count(self, outlet_id: str) -> int:
        return self._one("SELECT COUNT(*) AS n FROM ledger WHERE outlet_id = ?", outlet_id)["n"]

    # -- the operations dashboard (cloud_stub/dashboard/) ----------------------------------------

    def dash_outlets(self, *, merchant_nif: str | None, search: str | None, flagged: bool,
                     after: str | None, before: str | None, limit: int) -> list[dict]:
        """A page of outlets in id order (keyset: ids after `after`, or the page before
        `before`), each with its ledger tail, newest credential and its highest number seen,
        open flags and bound devices: one indexed lookup per column, so a page costs the same
        with 10,000 outlets as with ten."""
        where, args = self._outlet_filter(merchant_nif, search, flagged)
        if after is not None:
            where.append("o.id > ?")
            args.append(after)
        if before is not None:
            where.append("o.id < ?")
            args.append(before)
        rows = self._all(
            "SELECT o.id, o.name, o.merchant_nif, m.name AS merchant_name, o.time_zone, "
            "l.seq AS entries, l.recorded_at AS last_recorded_at, l.sealed_at AS last_sealed_at, "
            "c.id AS credential_id, c.block_start, c.block_end, c.not_after, c.closed_at, c.issued_at, "
            "(SELECT MAX(lx.fiscal_number) FROM ledger lx WHERE lx.authority_id = c.id) AS credential_last_used, "
            "(SELECT COUNT(*) FROM flags f WHERE f.outlet_id = o.id AND f.resolved_at IS NULL) AS open_flags, "
            "(SELECT COUNT(*) FROM devices d WHERE d.outlet_id = o.id AND d.unbound_at IS NULL) AS devices, "
            + self._SEEN_BY_DEVICES_AND_AGENTS +
            "FROM outlets o JOIN merchants m ON m.nif = o.merchant_nif "
            "LEFT JOIN ledger l ON l.outlet_id = o.id AND l.seq = "
            "(SELECT MAX(l2.seq) FROM ledger l2 WHERE l2.outlet_id = o.id) "
            "LEFT JOIN credentials c ON c.outlet_id = o.id AND c.block_start = "
            "(SELECT MAX(c2.block_start) FROM credentials c2 WHERE c2.outlet_id = o.id AND c2.revoked_at IS NULL) "
            "WHERE " + " AND ".join(where) + f" ORDER BY o.id {'DESC' if before is not None else ''} LIMIT ?",
            *args, limit)
        return rows[::-1] if before is not None else rows

    def dash_outlet_count(self, *, merchant_nif: str | None, search: str | None, flagged: bool) -> int:
        where, args = self._outlet_filter(merchant_nif, search, flagged)
        return self._one("SELECT COUNT(*) AS n FROM outlets o WHERE " + " AND ".join(where), *args)["n"]

    @staticmethod
    def _outlet_filter(merchant_nif: str | None, search: str | None, flagged: bool) -> tuple[list[str], list]:
        where: list[str] = ["1 = 1"]
        args: list[Any] = []
        if merchant_nif is not None:
            where.append("o.merchant_nif = ?")
            args.append(merchant_nif)
        if search:
            # `!` escapes LIKE's wildcards in what the operator typed (no backslash: the two
            # backends read backslashes in literals differently).
            pattern = "%" + search.lower().replace("!", "!!").replace("%", "!%").replace("_", "!_") + "%"
            where.append("(lower(o.id) LIKE ? ESCAPE '!' OR lower(o.name) LIKE ? ESCAPE '!')")
            args += [pattern, pattern]
        if flagged:
            where.append("EXISTS (SELECT 1 FROM flags f WHERE f.outlet_id = o.id AND f.resolved_at IS NULL)")
        return where, args

    def dash_ledger(self, outlet_id: str, *, before: int | None, after: int | None, limit: int,
                    inv_type: str | None = None, mode: str | None = None, authority_id: str | None = None,
                    start: str | None = None, end: str | None = None) -> list[dict]:
        """A page of the outlet's ledger, newest first, by keyset on `seq` (never OFFSET: the
        thousandth page costs what the first does)."""
        sql = ("SELECT seq, recorded_at, sealed_at, mode, inv_type, authority_id, fiscal_number, state, "
               "invoice_hash, invoice FROM ledger WHERE outlet_id = ?")
        args: list[Any] = [outlet_id]
        for clause, value in (("seq < ?", before), ("seq > ?", after), ("inv_type = ?", inv_type),
                              ("mode = ?", mode), ("authority_id = ?", authority_id), ("sealed_at >= ?", start), ("sealed_at < ?", end)):
            if value is not None:
                sql += " AND " + clause
                args.append(value)
        rows = self._all(sql + f" ORDER BY seq {'ASC' if after is not None else 'DESC'} LIMIT ?", *args, limit)
        return rows[::-1] if after is not None else rows

    def dash_ledger_days(self, since: str, outlet_id: str | None, merchant_nif: str | None) -> list[dict]:
        """Per UTC day of sealing: invoices, net sales (credit notes subtracted), sync lag
        (kpi_days: a row per outlet and day, whatever the number of entries)."""
        scope, args = self._kpi_scope("k", outlet_id, merchant_nif)
        return self._all(
            "SELECT k.day, SUM(k.invoices) AS invoices, SUM(k.net_sales) AS net_sales, "
            "SUM(k.lag_sum) / SUM(k.invoices) AS lag_avg, MAX(k.lag_max) AS lag_max "
            f"FROM kpi_days k{scope} AND k.day >= ? GROUP BY k.day ORDER BY k.day", *args, since)

    # The larger of two values (SQLite's two-argument max; PostgreSQL's GREATEST).
    _GREATEST = "max"

    def add_kpi_days(self, rows: list[tuple]) -> None:
        """Add (outlet_id, day, invoices, net_sales, lag_sum, lag_max) to the outlet's days."""
        self._many("INSERT INTO kpi_days (outlet_id, day, invoices, net_sales, lag_sum, lag_max, merchant_nif) "
                   "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (outlet_id, day) DO UPDATE SET "
                   "invoices = kpi_days.invoices + excluded.invoices, "
                   "net_sales = kpi_days.net_sales + excluded.net_sales, "
                   "lag_sum = kpi_days.lag_sum + excluded.lag_sum, "
                   f"lag_max = {self._GREATEST}(kpi_days.lag_max, excluded.lag_max)", self._with_merchant(rows))

    def dash_event_days(self, table: str, column: str, since: str, outlet_id: str | None,
                        merchant_nif: str | None) -> list[dict]:
        """Rejections (`received_at`) or flags (`created_at`) per UTC day."""
        assert (table, column) in (("rejections", "received_at"), ("flags", "created_at"))
        scope, args = self._kpi_scope("e", outlet_id, merchant_nif)
        return self._all(f"SELECT substr(e.{column}, 1, 10) AS day, COUNT(*) AS n FROM {table} e{scope} "
                         f"AND e.{column} >= ? GROUP BY substr(e.{column}, 1, 10) ORDER BY day", *args, since)

    @staticmethod
    def _kpi_scope(alias: str, outlet_id: str | None, merchant_nif: str | None) -> tuple[str, list]:
        if outlet_id is not None:
            return f" WHERE {alias}.outlet_id = ?", [outlet_id]
        if merchant_nif is not None:
            return (f" JOIN outlets o ON o.id = {alias}.outlet_id WHERE o.merchant_nif = ?", [merchant_nif])
        return " WHERE 1 = 1", []

    _CREDENTIAL = ("SELECT c.id, c.outlet_id, c.block_start, c.block_end, c.not_before, c.not_after, c.issued_at, "
                   "c.revoked_at, c.revoke_reason, c.closed_at, c.closed_last_used, "
                   "(SELECT MAX(l.fiscal_number) FROM ledger l WHERE l.authority_id = c.id) AS last_used "
                   "FROM credentials c")

    def dash_credentials(self, outlet_id: str, limit: int) -> list[dict]:
        """The outlet's newest credentials, each with the highest number the ledger holds from it."""
        return self._all(self._CREDENTIAL + " WHERE c.outlet_id = ? ORDER BY c.block_start DESC LIMIT ?",
                         outlet_id, limit)

    def dash_credential(self, credential_id: str) -> dict | None:
        return self._one(self._CREDENTIAL + " WHERE c.id = ?", credential_id)

    def dash_flags(self, outlet_id: str, limit: int) -> list[dict]:
        """The outlet's flags: open ones first, newest first."""
        return self._all("SELECT * FROM flags WHERE outlet_id = ? "
                         "ORDER BY CASE WHEN resolved_at IS NULL THEN 0 ELSE 1 END, id DESC LIMIT ?",
                         outlet_id, limit)

    def flag(self, flag_id: int) -> dict | None:
        return self._one("SELECT * FROM flags WHERE id = ?", flag_id)

    def rejections_of_authority(self, outlet_id: str, authority_id: str, limit: int) -> list[dict]:
        return self._all("SELECT * FROM rejections WHERE outlet_id = ? AND authority_id = ? ORDER BY id DESC LIMIT ?",
                         outlet_id, authority_id, limit)

    def ledger_last(self, outlet_id: str) -> dict | None:
        return self._one("SELECT seq, recorded_at, sealed_at FROM ledger WHERE outlet_id = ? "
                         "ORDER BY seq DESC LIMIT 1", outlet_id)

    def dgi_problem_queues(self, merchant_nif: str | None, limit: int) -> list[dict]:
        """Outlets whose forwarding is backing off or holds quarantined entries."""
        scope = " AND o.merchant_nif = ?" if merchant_nif is not None else ""
        return self._all(
            "SELECT q.*, (SELECT COUNT(*) FROM dgi_submissions s WHERE s.outlet_id = q.outlet_id "
            "AND s.state = 'quarantined') AS quarantined FROM dgi_queues q JOIN outlets o ON o.id = q.outlet_id "
            "WHERE (q.failures > 0 OR EXISTS (SELECT 1 FROM dgi_submissions s WHERE s.outlet_id = q.outlet_id "
            f"AND s.state = 'quarantined')){scope} ORDER BY q.outlet_id LIMIT ?",
            *([merchant_nif] if merchant_nif is not None else []), limit)

    def dgi_retry_now(self, outlet_id: str, now: str) -> bool:
        """A backing-off queue tries again at once (its failure count stays: the next failure
        waits as long as it would have). False when it was not waiting."""
        return self._run("UPDATE dgi_queues SET not_before = NULL, updated_at = ? WHERE outlet_id = ? "
                         "AND not_before IS NOT NULL AND not_before > ?", now, outlet_id, now) == 1

    # -- dashboard access: merchant tokens and sessions

    def insert_merchant_token(self, token_hash: str, merchant_nif: str, now: str, expires_at: str) -> None:
        self._run("INSERT INTO merchant_tokens (token_hash, merchant_nif, created_at, expires_at) VALUES (?, ?, ?, ?)",
                  token_hash, merchant_nif, now, expires_at)

    def revoke_merchant_tokens(self, merchant_nif: str, now: str) -> int:
        return self._run("UPDATE merchant_tokens SET revoked_at = ? WHERE merchant_nif = ? AND revoked_at IS NULL",
                         now, merchant_nif)

    def live_merchant_token(self, token_hash: str, now: str) -> dict | None:
        return self._one("SELECT * FROM merchant_tokens WHERE token_hash = ? AND revoked_at IS NULL "
                         "AND expires_at > ?", token_hash, now)

    def insert_session(self, id_hash: str, role: str, merchant_nif: str | None, token_hash: str | None,
                       now: str, expires_at: str) -> None:
        self._run("INSERT INTO dashboard_sessions (id_hash, role, merchant_nif, token_hash, created_at, expires_at) "
                  "VALUES (?, ?, ?, ?, ?, ?)", id_hash, role, merchant_nif, token_hash, now, expires_at)

    def live_session(self, id_hash: str, now: str) -> dict | None:
        """A session not expired, whose merchant token (if any) is still live."""
        return self._one(
            "SELECT * FROM dashboard_sessions s WHERE s.id_hash = ? AND s.expires_at > ? AND "
            "(s.token_hash IS NULL OR EXISTS (SELECT 1 FROM merchant_tokens t WHERE t.token_hash = s.token_hash "
            "AND t.revoked_at IS NULL AND t.expires_at > ?))", id_hash, now, now)

    def delete_session(self, id_hash: str) -> None:
        self._run("DELETE FROM dashboard_sessions WHERE id_hash = ?", id_hash)

    def purge_sessions(self, now: str) -> int:
        return self._run("DELETE FROM dashboard_sessions WHERE expires_at <= ?", now)


class SqliteTx(Tx):
    """A transaction on the SQLite store."""

    def __init__(self, conn: sqlite3.Connection):
        self._c = conn

    def _one(self, sql: str, *args: Any) -> dict[str, Any] | None:
        return self._c.execute(sql, args).fetchone()

    def _all(self, sql: str, *args: Any) -> list[dict[str, Any]]:
        return self._c.execute(sql, args).fetchall()

    def _run(self, sql: str, *args: Any) -> int:
        return self._c.execute(sql, args).rowcount

    def _many(self, sql: str, rows: list[tuple]) -> None:
        self._c.executemany(sql, rows)

    def _iter(self, sql: str, *args: Any) -> Iterator[dict[str, Any]]:
        yield from self._c.execute(sql, args)

    def lock_outlet(self, outlet_id: str) -> None:
        pass  # `BEGIN IMMEDIATE` already holds the database's write lock

    def lock_merchant(self, nif: str) -> None:
        pass  # as lock_outlet


# The WAL size (pages) at which a writing connection checkpoints by itself, inside its commit:
# only if the background checkpointer fell this far behind (SQLite's default is 1,000).
WRITER_CHECKPOINT_PAGES = 20_000
CHECKPOINT_IDLE_SECONDS = 5.0  # the checkpointer also runs this often with no commit to wake it
# The least time between two background checkpoints. Woken by every commit, the checkpointer ran
# one per commit: ≈ 100 µs of the process's CPU each (the forwarder commits twice per invoice),
# and GIL time taken from the event loop. Spaced, one checkpoint copies every commit of the
# interval; the WAL holds at most that interval's writes (a writer still checkpoints by itself
# past WRITER_CHECKPOINT_PAGES), and durability is the commits' own fsync, not the checkpoint's.
CHECKPOINT_SPACING_SECONDS = 0.25


class Store:
    """A SQLite database file with one connection per thread.

    Checkpoints (copying the WAL back into the database file, and its fsync) run in a background
    thread on its own connection, after write transactions (at most one checkpoint every
    `CHECKPOINT_SPACING_SECONDS`, copying all the commits since the last). Left to SQLite, the connection
    whose commit crosses 1,000 WAL pages runs the checkpoint inside that commit: a reconcile
    batch (≈ 5 MB of pages) then waited ≈ 18 ms for its commit instead of ≈ 9, with every
    verifier worker idle. A PASSIVE checkpoint never blocks readers or writers; a writer still
    checkpoints by itself past `WRITER_CHECKPOINT_PAGES`, should the thread ever fall behind.
    """

    def __init__(self, path: Path, background_checkpoints: bool = True, upto: int | None = None):
        """`upto`: apply the migrations up to this version only (tests of an upgrade)."""
        self.path = Path(path)
        self._local = threading.local()
        self._lock = threading.Lock()
        self._all_conns: list[sqlite3.Connection] = []
        self._migrate(upto)
        self._wake = threading.Event()
        self._stop = threading.Event()  # also ends the spacing wait at once
        self._checkpointer: threading.Thread | None = None
        self.checkpoints = 0  # background checkpoints run (tests)
        if background_checkpoints:
            self._checkpointer = threading.Thread(target=self._checkpoints, name="cloud-checkpoint", daemon=True)
            self._checkpointer.start()

    def _checkpoints(self) -> None:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
        try:
            conn.execute("PRAGMA synchronous = FULL")
            failing = False
            while True:
                self._wake.wait(CHECKPOINT_IDLE_SECONDS)
                self._wake.clear()
                if self._stop.is_set():
                    return
                try:
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                except sqlite3.Error as exc:  # e.g. the disk is full: the writers' own checkpoints remain
                    if not failing:  # the first failure, not every attempt
                        event("checkpoint.failed", level=logging.WARNING, error=f"{type(exc).__name__}: {exc}")
                    failing = True
                else:
                    failing = False
                self.checkpoints += 1
                # Commits meanwhile set _wake again: the next checkpoint, after the spacing,
                # copies all of them.
                if self._stop.wait(CHECKPOINT_SPACING_SECONDS):
                    return
        finally:
            conn.close()

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
            conn.row_factory = _row
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA foreign_keys = ON")
            conn.execute("PRAGMA busy_timeout = 30000")
            conn.execute(f"PRAGMA wal_autocheckpoint = {WRITER_CHECKPOINT_PAGES}")
            self._local.conn = conn
            with self._lock:
                self._all_conns.append(conn)
        return conn

    @contextmanager
    def _transaction(self, begin: str) -> Iterator[Tx]:
        conn = self._conn()
        conn.execute(begin)
        try:
            yield SqliteTx(conn)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        if begin == "BEGIN IMMEDIATE":
            self._wake.set()  # the checkpointer copies what this transaction wrote

    def write(self):
        """A write transaction holding the database's write lock from its first statement."""
        return self._transaction("BEGIN IMMEDIATE")

    def read(self):
        """A read transaction: one consistent snapshot."""
        return self._transaction("BEGIN")

    lookup = read  # a read transaction costs no round trip here

    def run_once(self, job: str):
        # One process per SQLite file runs the periodic jobs: nothing to share.
        return nullcontext(True)

    def lost_race(self, exc: BaseException) -> bool:
        return False  # `BEGIN IMMEDIATE`: one writer at a time, no race to lose

    # SQLite's primary result codes that say the file cannot be used now, whatever the statement:
    # busy or locked past busy_timeout, an I/O error, the file cannot be opened, the disk is full.
    _UNAVAILABLE_CODES = {5: "busy", 6: "locked", 10: "I/O error", 13: "disk full", 14: "cannot open"}

    def unavailable(self, exc: BaseException) -> str | None:
        code = getattr(exc, "sqlite_errorcode", None)
        if isinstance(exc, sqlite3.Error) and code is not None and code & 0xFF in self._UNAVAILABLE_CODES:
            return f"SQLite: {exc}"
        return None

    def ensure_ledger_partitions(self, now: datetime) -> list[str]:
        return []  # SQLite's ledger is one table

    def archive_ledger_month(self, month: date, now: str) -> dict:
        raise Conflict("not_partitioned", "the SQLite ledger is one table and is never archived in part: "
                                          "archiving a month needs the PostgreSQL store (docs/cloud-scaling.md)")

    def ledger_archives(self) -> list[dict]:
        return []

    def _migrate(self, upto: int | None) -> None:
        migrations.migrate(self._conn(), [m for m in sqlite_migrations() if upto is None or m[0] <= upto])

    def close(self) -> None:
        if self._checkpointer is not None:
            self._stop.set()
            self._wake.set()
            self._checkpointer.join(timeout=30)
            self._checkpointer = None
        with self._lock:
            for conn in self._all_conns:
                conn.close()
            self._all_conns.clear()
        self._local = threading.local()


def sqlite_migrations() -> list[tuple[int, str, str]]:
    # MIGRATIONS[i] is version i + 1, the numbering of the records the cloud kept before the
    # shared runner (fiscal/runtime/migrations.py), so existing ledgers open unchanged.
    # repository_pg.PG_MIGRATIONS carries the same versions for PostgreSQL.
    # From version 5 a migration also has a name saying what it does ((name, script) pairs).
    return [(i, *m) if isinstance(m, tuple) else (i, f"{i:04d}", m) for i, m in enumerate(MIGRATIONS, 1)]


def is_postgresql_url(url: str | None) -> bool:
    return bool(url) and url.split(":", 1)[0] in ("postgresql", "postgres")


def open_store(database_url: str | None, sqlite_path: Path, *, pool_size: int = 4) -> Repository:
    """The store the configuration names: PostgreSQL for a `postgresql://` URL, else the SQLite
    file in the data folder (the default: nothing to set up)."""
    if not database_url:
        return Store(sqlite_path)
    if not is_postgresql_url(database_url):
        raise StoreError(f"unsupported database URL scheme {database_url.split(':', 1)[0]!r}: "
                         "use postgresql://user@host:port/dbname (or leave it unset for SQLite)")
    from .repository_pg import PgStore  # psycopg is loaded only by those who use it

    return PgStore(database_url, pool_size=pool_size)
