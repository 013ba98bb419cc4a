"""The PostgreSQL backend of the cloud's repository (repository.py has the interface and its SQL).

Synchronous psycopg 3 connections from a `psycopg_pool.ConnectionPool`, used from the service's
worker threads exactly as the SQLite store's per-thread connections are (the service's shape
stays as it is: blocking calls in a small thread pool).

Concurrency, with any number of service instances on one database:
  * a write transaction runs at READ COMMITTED and first locks the outlet it writes for
    (`lock_outlet`: `SELECT ... FOR UPDATE` on the outlet's `counters` row). Every statement after
    the lock sees what the previous holder committed, so the outlet's counter, chain heads, ledger
    tail and flags are read and written by one transaction at a time, whichever instance runs it;
  * unique constraints (number_key, (outlet_id, seq), request ids) refuse what a bug could still
    let through; the ledger is partitioned by month since version 6, so the first two are held
    by `ledger_keys` across partitions (ledger_partitions.py);
  * a read transaction is REPEATABLE READ READ ONLY: one snapshot, as SQLite's; a read of one
    statement (`lookup`, every request's token) runs alone in autocommit, its own snapshot;
  * a periodic job runs on one instance at a time (`run_once`: `pg_try_advisory_lock`).

Migrations carry the same versions and names as the SQLite ones (`repository.MIGRATIONS`), are
recorded in the same `schema_migrations` table, and each runs in its own transaction under an
advisory lock, so two instances starting at once apply it once.
"""
from __future__ import annotations

import contextlib
import functools
import re
import select
import sys
import threading
import time
from contextlib import contextmanager
from datetime import date, datetime, timezone
from typing import Any, Iterator

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool, PoolTimeout

from fiscal.runtime.migrations import Migration, SchemaTooNew, as_migrations

from .errors import Conflict, Invalid
from . import ledger_partitions
from .repository import AGENT_HEARTBEATS, APPEND_ONLY, OUTLET_TABLES, LedgerEntry, SealState, StoreError, Tx, kpi_days_from_ledger

# repository.SQLITE_TOTAL and SQLITE_LAG in PostgreSQL (the invoice's U+0000 as in ledger_invoice_id).
PG_TOTAL = "((replace(invoice, '\\u0000', '\\ufffd')::json #>> '{totals,total}')::float8)"
PG_LAG = "EXTRACT(EPOCH FROM (recorded_at::timestamptz - sealed_at::timestamptz))"


def _c_text(script: str) -> str:
    # Every text column compares and sorts byte by byte, as in SQLite, whatever the database's
    # locale (ids, ISO timestamps compared as strings, `ORDER BY` of outlet ids and MIDs).
    return re.sub(r"\bTEXT\b", 'TEXT COLLATE "C"', script)


PG_MIGRATIONS: list[Migration] = as_migrations([
    (1, "0001", _c_text("""
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
    -- One counter per outlet; its row is also the outlet's write lock (`lock_outlet`).
    CREATE TABLE counters (
        outlet_id TEXT PRIMARY KEY REFERENCES outlets(id),
        next_number BIGINT NOT NULL
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
        block_start BIGINT NOT NULL,
        block_end BIGINT NOT NULL,
        not_before TEXT NOT NULL,
        not_after TEXT NOT NULL,
        document TEXT NOT NULL,
        issued_at TEXT NOT NULL,
        revoked_at TEXT,
        revoke_reason TEXT,
        closure TEXT,
        closed_last_used BIGINT,
        closed_at TEXT,
        audit_done_at TEXT,
        UNIQUE (agent_id, request_id)
    );
    CREATE INDEX credentials_outlet ON credentials(outlet_id, block_start);
    CREATE TABLE ledger (
        id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        outlet_id TEXT NOT NULL,
        seq BIGINT NOT NULL,
        recorded_at TEXT NOT NULL,
        mode TEXT NOT NULL,
        inv_type TEXT NOT NULL,
        authority_id TEXT NOT NULL,
        fiscal_number BIGINT NOT NULL,
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
    CREATE FUNCTION ledger_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN RAISE EXCEPTION 'the ledger is append-only'; END $$;
    CREATE TRIGGER ledger_no_update BEFORE UPDATE OR DELETE ON ledger
        FOR EACH ROW EXECUTE FUNCTION ledger_append_only();
    CREATE TRIGGER ledger_no_truncate BEFORE TRUNCATE ON ledger
        FOR EACH STATEMENT EXECUTE FUNCTION ledger_append_only();
    CREATE TABLE seal_requests (
        outlet_id TEXT NOT NULL,
        request_id TEXT NOT NULL,
        fingerprint TEXT NOT NULL,
        ledger_id BIGINT NOT NULL REFERENCES ledger(id),
        PRIMARY KEY (outlet_id, request_id)
    );
    CREATE TABLE flags (
        id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
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
        id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        outlet_id TEXT NOT NULL,
        mode TEXT,
        authority_id TEXT,
        fiscal_number BIGINT,
        reason TEXT NOT NULL,
        detail TEXT NOT NULL,
        invoice_hash TEXT,
        received_at TEXT NOT NULL
    );
    CREATE INDEX rejections_outlet ON rejections(outlet_id, reason, fiscal_number);
    """)),
    # 2: as SQLite's version 2 (repository.MIGRATIONS[1]), which says why.
    (2, "0002", _c_text("""
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
    CREATE TABLE provisioning_tokens (
        token_hash TEXT PRIMARY KEY,
        outlet_id TEXT NOT NULL REFERENCES outlets(id),
        created_at TEXT NOT NULL,
        expires_at TEXT NOT NULL,
        mid TEXT,
        used_at TEXT
    );
    -- `id` keeps the insertion order SQLite's rowid gives (the first entry with a code wins).
    CREATE TABLE invoice_codes (
        id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        outlet_id TEXT NOT NULL,
        code TEXT NOT NULL,
        inv_type TEXT NOT NULL,
        total TEXT NOT NULL,
        reference_code TEXT
    );
    INSERT INTO invoice_codes (outlet_id, code, inv_type, total, reference_code)
        SELECT outlet_id, invoice::json #>> '{security,code}', inv_type,
               invoice::json #>> '{totals,total}', invoice::json #>> '{reference,code}'
        FROM ledger ORDER BY id;
    CREATE INDEX invoice_codes_code ON invoice_codes(outlet_id, code);
    CREATE INDEX invoice_codes_reference ON invoice_codes(outlet_id, reference_code)
        WHERE reference_code IS NOT NULL;
    ALTER TABLE ledger ADD COLUMN state TEXT;
    ALTER TABLE flags ADD COLUMN authority_id TEXT;
    INSERT INTO flags (outlet_id, reason, credential_id, numbers, detail, created_at, authority_id)
        SELECT outlet_id, 'device_review', NULL, '[]',
               'device ' || mid || ' was bound by the outlet''s agent before the operator bound devices: '
               || 'confirm it (stalela cloud devices bind) or unbind it',
               to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"+00:00"'), mid
        FROM devices ORDER BY outlet_id, mid;
    """)),
    # 3: as SQLite's version 3 (repository.MIGRATIONS[2], docs/dgi-forwarding.md), which says why.
    # Times stay UTC ISO-8601 text compared as text (forwarding.ts), as on SQLite. Every table is
    # keyed by outlet first (ready to be sharded by outlet).
    (3, "0003", _c_text("""
    CREATE TABLE dgi_queues (
        outlet_id TEXT PRIMARY KEY,
        next_seq BIGINT NOT NULL,
        lease_owner TEXT,
        lease_until TEXT,
        not_before TEXT,
        failures INTEGER NOT NULL DEFAULT 0,
        last_error TEXT,
        updated_at TEXT NOT NULL
    );
    CREATE TABLE dgi_submissions (
        outlet_id TEXT NOT NULL,
        seq BIGINT NOT NULL,
        ledger_id BIGINT NOT NULL,
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
    CREATE TABLE dgi_events (
        id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        outlet_id TEXT NOT NULL,
        seq BIGINT NOT NULL,
        ledger_id BIGINT NOT NULL,
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
    CREATE UNIQUE INDEX dgi_events_once ON dgi_events(outlet_id, seq)
        WHERE kind IN ('normalized', 'device_reported');
    -- SQLite's json_extract(invoice, '$.id'); the query (PgTx._INVOICE_ID) spells it the same.
    -- PostgreSQL's JSON refuses the escape \\u0000, which an invoice's strings may hold: it is
    -- read as U+FFFD (only the id is taken out, and no id holds either), so appending such an
    -- invoice never fails on this index.
    CREATE INDEX ledger_invoice_id ON ledger(outlet_id, ((replace(invoice, '\\u0000', '\\ufffd')::json ->> 'id')));
    CREATE FUNCTION dgi_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN RAISE EXCEPTION 'DGI events are append-only'; END $$;
    CREATE TRIGGER dgi_events_no_update BEFORE UPDATE OR DELETE ON dgi_events
        FOR EACH ROW EXECUTE FUNCTION dgi_events_append_only();
    CREATE TRIGGER dgi_events_no_truncate BEFORE TRUNCATE ON dgi_events
        FOR EACH STATEMENT EXECUTE FUNCTION dgi_events_append_only();
    """)),
    # 4: as SQLite's version 4 (repository.MIGRATIONS[3]: the dashboard), which says why.
    (4, "0004", _c_text("""
    CREATE TABLE merchant_tokens (
        token_hash TEXT PRIMARY KEY,
        merchant_nif TEXT NOT NULL REFERENCES merchants(nif),
        created_at TEXT NOT NULL,
        expires_at TEXT NOT NULL,
        revoked_at TEXT
    );
    CREATE TABLE dashboard_sessions (
        id_hash TEXT PRIMARY KEY,
        role TEXT NOT NULL,
        merchant_nif TEXT,
        token_hash TEXT,
        created_at TEXT NOT NULL,
        expires_at TEXT NOT NULL
    );
    CREATE INDEX dashboard_sessions_expiry ON dashboard_sessions(expires_at);
    CREATE INDEX outlets_merchant ON outlets(merchant_nif, id);
    CREATE INDEX flags_open ON flags(outlet_id) WHERE resolved_at IS NULL;
    CREATE INDEX flags_created ON flags(created_at);
    CREATE INDEX rejections_received ON rejections(received_at);
    CREATE INDEX devices_outlet ON devices(outlet_id, last_seen);
    CREATE TABLE kpi_days (
        outlet_id TEXT NOT NULL,
        day TEXT NOT NULL,
        invoices BIGINT NOT NULL,
        net_sales DOUBLE PRECISION NOT NULL,
        lag_sum DOUBLE PRECISION NOT NULL,
        lag_max DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (outlet_id, day)
    );
    CREATE INDEX kpi_days_day ON kpi_days(day, invoices, net_sales, lag_sum, lag_max);
    """) + kpi_days_from_ledger(PG_TOTAL, PG_LAG, merchant_keys=False)),
    # 5: as SQLite's version 5 (repository.MIGRATIONS[4]): the outlet's merchant on every row of
    # the outlet's data. PostgreSQL adds the column, fills it and then makes it NOT NULL.
    (5, "0005_outlet_merchant_keys", _c_text("\n".join(
        (f"ALTER TABLE {t} DISABLE TRIGGER {t}_no_update;\n" if t in APPEND_ONLY else "")
        + f"ALTER TABLE {t} ADD COLUMN merchant_nif TEXT;\n"
        f"UPDATE {t} SET merchant_nif = o.merchant_nif FROM outlets o WHERE o.id = {t}.outlet_id;\n"
        f"ALTER TABLE {t} ALTER COLUMN merchant_nif SET NOT NULL;"
        + (f"\nALTER TABLE {t} ENABLE TRIGGER {t}_no_update;" if t in APPEND_ONLY else "")
        for t in OUTLET_TABLES))),
    # 6: the ledger partitioned by month (ledger_partitions.py says how and why); SQLite records
    # the same version as a no-op.
    (6, "0006_ledger_partitions_postgresql_only", ledger_partitions.partition_ledger),
    # 7: as SQLite's version 7: an agent's last heartbeat.
    (7, "0007_agent_heartbeats", _c_text(AGENT_HEARTBEATS)),
    # 8: the record of archived months (ledger_partitions.archive_month); SQLite records the same
    # version as a no-op (its ledger is one table, never archived in part).
    (8, "0008_ledger_archives_postgresql_only", _c_text(ledger_partitions.ARCHIVES)),
])

def _visible(*values: Any) -> tuple:
    """Diagnostic texts with U+FFFD in place of U+0000 (see PgTx)."""
    return tuple(v.replace("\x00", "\ufffd") if type(v) is str else v for v in values)


# Advisory lock keys (any 64-bit numbers no other application on the database uses).
_MIGRATION_LOCK = 0x5374_616C_0001
_JOB_LOCK_BASE = 0x5374_616C_1000


@functools.lru_cache(maxsize=512)
def _pg(sql: str) -> str:
    """The shared SQL with psycopg's placeholders (the statements contain no other `?` or `%`)."""
    return sql.replace("?", "%s")


def _storable(sql: str, args: tuple) -> tuple:
    """The parameters as PostgreSQL can take them (see PgTx: U+0000)."""
    if not any(type(a) is str and "\x00" in a for a in args):
        return args
    if sql.startswith("SELECT"):
        return _visible(*args)  # compared as the diagnostics store it; no ledger value has U+FFFD
    raise _unstorable()


def _unstorable() -> Invalid:
    return Invalid("unstorable_text", "a text with the character U+0000 cannot be stored in this "
                   "cloud's database (PostgreSQL); nothing was written")


class PgTx(Tx):
    """A transaction on the PostgreSQL store.

    PostgreSQL's text cannot hold U+0000 (SQLite's can), and an uploaded invoice's strings may
    carry one: the diagnostics (rejections, flags) keep U+FFFD in its place, a lookup compares
    the value the same way (no id the cloud issues, nor any ledger key, holds U+FFFD), and any
    other write of one is refused (`Invalid`, 422, the transaction rolled back) rather than
    stored altered.
    """

    _CODES_ORDER = "id"
    _FOR_UPDATE = " FOR UPDATE"
    # As the index ledger_invoice_id (migration 3) spells it, so that the query uses it.
    _INVOICE_ID = "(replace(invoice, '\\u0000', '\\ufffd')::json ->> 'id')"
    _GREATEST = "GREATEST"

    def __init__(self, conn: psycopg.Connection):
        self._c = conn
        self._deferring = False  # inside `writes_deferred`
        # The pipeline the deferred writes were sent in (its context manager), and their cursors:
        # open until the next other statement or the end of `writes_deferred`.
        self._pipeline: contextlib.AbstractContextManager | None = None
        self._sent: list[psycopg.Cursor] = []

    def _one(self, sql: str, *args: Any) -> dict[str, Any] | None:
        if self._pipeline is not None:
            self._settle()
        return self._c.execute(_pg(sql), _storable(sql, args)).fetchone()

    def _all(self, sql: str, *args: Any) -> list[dict[str, Any]]:
        if self._pipeline is not None:
            self._settle()
        return self._c.execute(_pg(sql), _storable(sql, args)).fetchall()

    def _run(self, sql: str, *args: Any) -> int:
        if self._pipeline is not None:
            self._settle()
        return self._c.execute(_pg(sql), _storable(sql, args)).rowcount

    def _many(self, sql: str, rows: list[tuple]) -> None:
        if not rows:
            return
        rows = [_storable(sql, row) for row in rows]
        if not self._deferring:
            if len(rows) == 1:
                # One row: a plain statement (executemany's pipeline costs more CPU for a single row).
                self._c.execute(_pg(sql), rows[0])
                return
            with self._c.cursor() as cur:
                cur.executemany(_pg(sql), rows)  # pipelined by psycopg: one round trip per batch
            return
        # Deferred: sent in a pipeline left open, so executemany returns once the rows are sent,
        # not once the server has inserted them (≈ 0.2 ms of its CPU per ledger row, indexes and
        # the ledger_keys trigger included); the caller works on meanwhile.
        if self._pipeline is None:
            self._pipeline = self._c.pipeline()
            self._pipeline.__enter__()
        cur = self._c.cursor()
        self._sent.append(cur)
        cur.executemany(_pg(sql), rows)

    def _settle(self, exc_info: tuple = (None, None, None)) -> None:
        """Wait for the deferred writes (leave their pipeline): an error they met is raised here,
        unless `exc_info` is already on its way (then that one goes on)."""
        pipeline, self._pipeline = self._pipeline, None
        sent, self._sent = self._sent, []
        try:
            if pipeline is not None:
                pipeline.__exit__(*exc_info)
        finally:
            for cur in sent:
                cur.close()

    @contextmanager
    def writes_deferred(self) -> Iterator[None]:
        self._deferring = True
        try:
            yield
        except BaseException:
            self._deferring = False
            self._settle(sys.exc_info())
            raise
        self._deferring = False
        self._settle()

    def _iter(self, sql: str, *args: Any) -> Iterator[dict[str, Any]]:
        if self._pipeline is not None:
            self._settle()
        # A server-side cursor: an outlet's whole ledger streams in pages, as SQLite's cursor does,
        # instead of arriving in memory at once.
        with self._c.cursor(name="stream") as cur:
            cur.itersize = 2000
            cur.execute(_pg(sql), _storable(sql, args))
            yield from cur

    def by_number_keys(self, number_keys: list[str]) -> dict[str, dict]:
        # One array parameter instead of the shared SQL's IN list: a list of a chunk's ≈ 60 keys
        # is planned again at each call, over every partition of the ledger, ≈ 20 µs of the
        # server's CPU per key (measured on a 4-partition ledger); `= ANY` ≈ 1.5 µs, same index.
        # A key with U+0000 is compared as the diagnostics store it (see _storable): no ledger key
        # holds U+FFFD, so it is not found, as before.
        found: dict[str, dict] = {}
        if number_keys:
            keys = [k.replace("\x00", "\ufffd") for k in number_keys]
            for row in self._all("SELECT number_key, outlet_id, invoice_hash FROM ledger WHERE number_key = ANY(?)",
                                 keys):
                found[row["number_key"]] = {"outlet_id": row["outlet_id"], "invoice_hash": row["invoice_hash"]}
        return found

    def insert_rejection(self, outlet_id: str, mode: str | None, authority_id: str | None,
                         fiscal_number: int | None, reason: str, detail: str,
                         invoice_hash: str | None, now: str) -> None:
        super().insert_rejection(*_visible(outlet_id, mode, authority_id, fiscal_number, reason, detail,
                                           invoice_hash, now))

    def insert_flag(self, outlet_id: str, reason: str, credential_id: str | None, numbers: list,
                    detail: str, now: str, authority_id: str | None = None) -> int:
        return super().insert_flag(*_visible(outlet_id, reason, credential_id), numbers,
                                   *_visible(detail, now, authority_id))

    def seal_state(self, outlet_id: str, request_id: str, chain_key: str, inv_type: str) -> SealState:
        # One statement, after the lock (`lock_outlet`, its own statement: at READ COMMITTED this
        # one's snapshot is taken once the lock is held, so it sees the previous holder's commit).
        # The counter moves only when the request was not sealed before.
        row = self._c.execute(_SEAL_STATE, _storable("WITH", (outlet_id, request_id, outlet_id, chain_key,
                                                                chain_key, inv_type, outlet_id))).fetchone()
        if row["done_ledger_id"] is not None:
            return SealState(done={"fingerprint": row["done_fingerprint"], "ledger_id": row["done_ledger_id"]})
        head = None if row["head_invoice"] is None else {
            "fiscal_number": row["head_fiscal_number"], "invoice_hash": row["head_invoice_hash"],
            "sealed_at": row["head_sealed_at"], "invoice": row["head_invoice"]}
        last_same = None if row["last_same_invoice"] is None else {"invoice": row["last_same_invoice"]}
        tail = None if row["tail_seq"] is None else {"seq": row["tail_seq"], "ledger_hash": row["tail_ledger_hash"]}
        return SealState(done=None, number=row["number"], head=head, last_same=last_same, tail=tail)

    def append_sealed(self, entry: LedgerEntry, code: tuple, days: list[tuple], request_id: str,
                      fingerprint: str) -> int:
        if len(days) != 1:  # one entry has one day; anything else the general way
            return super().append_sealed(entry, code, days, request_id, fingerprint)
        nif = self.merchant_of(entry.outlet_id)
        args = (entry.outlet_id, entry.seq, entry.recorded_at, entry.mode, entry.inv_type, entry.authority_id,
                entry.fiscal_number, entry.number_key, entry.chain_key, entry.sealed_at, entry.invoice_hash,
                entry.prev_ledger_hash, entry.ledger_hash, entry.invoice, entry.state, nif,
                *code, nif, *days[0], nif, entry.outlet_id, nif, request_id, fingerprint)
        return self._c.execute(_APPEND_SEALED, _storable("WITH", args)).fetchone()["id"]

    def lock_outlet(self, outlet_id: str) -> None:
        # The counter row carries the outlet's merchant: the lock reads it for the inserts to follow.
        row = self._one("SELECT merchant_nif FROM counters WHERE outlet_id = ? FOR UPDATE", outlet_id)
        if row is not None:
            self.__dict__.setdefault("_merchants", {})[outlet_id] = row["merchant_nif"]

    def archived_anchor(self, outlet_id: str) -> dict | None:
        # The key row (kept when its partition is archived) of the last archived entry before the
        # outlet's first one still in the ledger: only what `archive_month` recorded counts as
        # archived (ledger_archived_ranges run from seq 1 without a hole; it checks so), so
        # entries deleted otherwise are reported missing. A month restored and attached again
        # is in the ledger: its entries are verified, not skipped.
        return self._one(
            "SELECT k.seq, k.ledger_hash FROM ledger_keys k WHERE k.outlet_id = ? AND k.seq = LEAST("
            "(SELECT COALESCE(MAX(last_seq), 0) FROM ledger_archived_ranges WHERE outlet_id = ?), "
            "COALESCE((SELECT MIN(seq) FROM ledger WHERE outlet_id = ?) - 1, 9223372036854775807))",
            outlet_id, outlet_id, outlet_id)

    def lock_merchant(self, nif: str) -> None:
        # NO KEY UPDATE: binds of one merchant wait for each other, an outlet being added for it
        # (its foreign key takes KEY SHARE on the merchant) does not.
        self._run("SELECT 1 FROM merchants WHERE nif = ? FOR NO KEY UPDATE", nif)

    def retire_agents(self, outlet_id: str, now: str) -> list[str]:
        # Two enrollments of one outlet with two tokens: the second sees the first's agent.
        self.lock_outlet(outlet_id)
        return super().retire_agents(outlet_id, now)


class _OneStatement(PgTx):
    """The Tx of `PgStore.lookup`: one statement, then any other is a programming error."""

    def __init__(self, conn: psycopg.Connection):
        super().__init__(_Once(conn))


class _Once:
    def __init__(self, conn: psycopg.Connection):
        self._conn, self._used = conn, False

    def execute(self, *args: Any, **kwargs: Any):
        if self._used:
            raise RuntimeError("a lookup runs one statement: use store.read() for more")
        self._used = True
        return self._conn.execute(*args, **kwargs)

    def cursor(self, *args: Any, **kwargs: Any):
        raise RuntimeError("a lookup runs one statement: use store.read() for more")


# PgTx.seal_state: Tx.seal_request, take_numbers, chain_head, last_of_type and ledger_tail in
# one statement (parameters: outlet, request, outlet, chain key, chain key, type, outlet).
_SEAL_STATE = """
WITH done AS (SELECT fingerprint, ledger_id FROM seal_requests WHERE outlet_id = %s AND request_id = %s),
taken AS (UPDATE counters SET next_number = next_number + 1
          WHERE outlet_id = %s AND NOT EXISTS (SELECT 1 FROM done) RETURNING next_number - 1 AS number)
SELECT d.fingerprint AS done_fingerprint, d.ledger_id AS done_ledger_id, (SELECT number FROM taken) AS number,
       h.fiscal_number AS head_fiscal_number, h.invoice_hash AS head_invoice_hash, h.sealed_at AS head_sealed_at,
       h.invoice AS head_invoice, s.invoice AS last_same_invoice, t.seq AS tail_seq, t.ledger_hash AS tail_ledger_hash
FROM (SELECT 1) one
LEFT JOIN done d ON true
LEFT JOIN LATERAL (SELECT fiscal_number, invoice_hash, sealed_at, invoice FROM ledger
                   WHERE chain_key = %s ORDER BY id DESC LIMIT 1) h ON d.ledger_id IS NULL
LEFT JOIN LATERAL (SELECT invoice FROM ledger WHERE chain_key = %s AND inv_type = %s
                   ORDER BY id DESC LIMIT 1) s ON d.ledger_id IS NULL
LEFT JOIN LATERAL (SELECT seq, ledger_hash FROM ledger WHERE outlet_id = %s
                   ORDER BY seq DESC LIMIT 1) t ON d.ledger_id IS NULL
"""

# PgTx.append_sealed: Tx.append, insert_codes, add_kpi_days and insert_seal_request in one
# statement. The entry's `ledger_keys` row (its trigger) is written before the request's row,
# which refers to it, is checked: both at the statement's end, in the order they were queued.
_APPEND_SEALED = """
WITH entry AS (
    INSERT INTO ledger (outlet_id, seq, recorded_at, mode, inv_type, authority_id, fiscal_number, number_key,
                        chain_key, sealed_at, invoice_hash, prev_ledger_hash, ledger_hash, invoice, state, merchant_nif)
    VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING id),
code AS (
    INSERT INTO invoice_codes (outlet_id, code, inv_type, total, reference_code, merchant_nif)
    VALUES (%s, %s, %s, %s, %s, %s)),
day AS (
    INSERT INTO kpi_days (outlet_id, day, invoices, net_sales, lag_sum, lag_max, merchant_nif)
    VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (outlet_id, day) DO UPDATE SET
        invoices = kpi_days.invoices + excluded.invoices, net_sales = kpi_days.net_sales + excluded.net_sales,
        lag_sum = kpi_days.lag_sum + excluded.lag_sum, lag_max = GREATEST(kpi_days.lag_max, excluded.lag_max)),
request AS (
    INSERT INTO seal_requests (outlet_id, merchant_nif, request_id, fingerprint, ledger_id)
    SELECT %s, %s, %s, %s, id FROM entry)
SELECT id FROM entry
"""


POOL_WAIT_SECONDS = 5.0


class PgStore:
    """A PostgreSQL database through a pool of synchronous connections (autocommit; each
    transaction is an explicit BEGIN ... COMMIT, as in the SQLite store)."""

    def __init__(self, url: str, *, pool_size: int = 4, upto: int | None = None, connect_timeout: float = 10):
        self.url = url
        # One direct attempt first: a bad URL or a server that does not answer is one clear
        # line now, not the pool's retries in the log and a timeout.
        problem = _connect_problem(url, connect_timeout)
        if problem is not None:
            raise StoreError(f"cannot connect to the PostgreSQL database {redact(url)}: "
                             f"{redact(problem.replace(url, redact(url)))}")
        self._pool = ConnectionPool(
            url, min_size=1, max_size=max(2, pool_size + 2), open=False, name="cloud-pg",
            # A connection the server dropped (a restart, a failover) is replaced before it is lent
            # (_check: without a round trip for a connection used just now).
            check=_check, reset=_returned,
            # How long a request waits for a connection: with the database down, a request is
            # answered 503 after this, not after the pool's default 30 s (a POS's sale is waiting).
            timeout=POOL_WAIT_SECONDS,
            kwargs={"autocommit": True, "row_factory": dict_row,
                    "connect_timeout": max(1, int(connect_timeout))})
        try:
            self._pool.open(wait=True, timeout=connect_timeout)
        except PoolTimeout:
            self._pool.close()
            raise StoreError(f"cannot connect to the PostgreSQL database {redact(url)}: timed out") from None
        try:
            with self._pool.connection() as conn:
                migrate(conn, [m for m in PG_MIGRATIONS if upto is None or m.version <= upto])
        except BaseException:
            self._pool.close()
            raise
        self._jobs = threading.Lock()

    @contextmanager
    def _transaction(self, begin: str) -> Iterator[PgTx]:
        with self._pool.connection() as conn:
            conn.execute(begin)
            try:
                yield PgTx(conn)
            except BaseException:
                try:
                    conn.execute("ROLLBACK")
                except psycopg.Error:
                    pass  # the connection itself broke: the pool replaces it; the first error is the one raised
                raise
            conn.execute("COMMIT")

    def write(self):
        """A write transaction; outlet-scoped writes call `lock_outlet` first (the service does)."""
        return self._transaction("BEGIN ISOLATION LEVEL READ COMMITTED")

    def read(self):
        """A read transaction: one consistent snapshot."""
        return self._transaction("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")

    @contextmanager
    def lookup(self) -> Iterator[PgTx]:
        """A read of one statement, without BEGIN and COMMIT (the connections are in autocommit:
        the statement is its own transaction and snapshot). A second statement is refused: it
        would not share the first one's snapshot."""
        with self._pool.connection() as conn:
            yield _OneStatement(conn)

    def lost_race(self, exc: BaseException) -> bool:
        # READ COMMITTED: two transactions that both found no row and both inserted it; the
        # loser's retry sees the winner's row. Serialization failures and deadlocks likewise.
        return isinstance(exc, (psycopg.errors.UniqueViolation, psycopg.errors.SerializationFailure,
                                psycopg.errors.DeadlockDetected))

    def unavailable(self, exc: BaseException) -> str | None:
        # OperationalError: the connection failed or broke, the server is shutting down or
        # refuses connections; PoolTimeout: no connection could be had in time. A statement the
        # server refuses (a constraint, a syntax error) is another class: not an outage.
        if isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError, PoolTimeout)):
            lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
            return "PostgreSQL: " + redact(lines[0] if lines else type(exc).__name__)
        return None

    @contextmanager
    def run_once(self, job: str) -> Iterator[bool]:
        """Hold the job's session-level advisory lock for the block, if no other instance does."""
        key = _JOB_LOCK_BASE + (int.from_bytes(job.encode("utf-8"), "big") % 0xFFFF)
        with self._pool.connection() as conn:
            got = conn.execute("SELECT pg_try_advisory_lock(%s) AS got", (key,)).fetchone()["got"]
            try:
                yield got
            finally:
                if got and not conn.closed:
                    conn.execute("SELECT pg_advisory_unlock(%s)", (key,))

    def ensure_ledger_partitions(self, now: datetime) -> list[str] | None:
        """The periodic partition job (ledger_partitions.ensure_partitions): the partitions
        created, or None when another instance is running it now."""
        with self.run_once("ledger-partitions") as mine:
            if not mine:
                return None
            with self._pool.connection() as conn:
                return ledger_partitions.ensure_partitions(conn, now.astimezone(timezone.utc).date())

    def archive_ledger_month(self, month: date, now: str) -> dict:
        with self._pool.connection() as conn:
            try:
                return ledger_partitions.archive_month(conn, month, now)
            except ledger_partitions.ArchiveRefused as exc:
                raise Conflict("archive_refused", str(exc)) from None

    def ledger_archives(self) -> list[dict]:
        with self._pool.connection() as conn:
            return ledger_partitions.archives(conn)

    def close(self) -> None:
        self._pool.close()


# A connection idle for longer than this is checked with a round trip before it is lent again.
FULL_CHECK_IDLE = 5.0


def _returned(conn: psycopg.Connection) -> None:
    conn._stalela_returned_at = time.monotonic()


def _check(conn: psycopg.Connection) -> None:
    """The pool's check before it lends a connection: raise if the connection is broken.

    psycopg_pool's own check is a round trip (an empty query) on every loan: three per online
    seal, ≈ 7 % of the service's CPU. A connection used less than FULL_CHECK_IDLE seconds ago
    is checked locally instead: an idle connection has nothing to read, so a readable socket
    means the server said goodbye (terminated, restarting, failing over) and the round trip
    then decides. One idle for longer gets the round trip (a peer gone without a word)."""
    idle = time.monotonic() - getattr(conn, "_stalela_returned_at", 0.0)
    if idle < FULL_CHECK_IDLE and not conn.closed and conn.pgconn.status == psycopg.pq.ConnStatus.OK:
        poll = select.poll()
        poll.register(conn.fileno(), select.POLLIN)
        if not poll.poll(0):
            return
    ConnectionPool.check_connection(conn)


def redact(url: str) -> str:
    """The URL without its password (an error message never shows it)."""
    return re.sub(r"(//[^:/@\s]+):[^@\s]*@", r"\1:***@", url)


def _connect_problem(url: str, timeout: float) -> str | None:
    """Why one direct connection fails (psycopg's first line), or None when it works."""
    try:
        psycopg.connect(url, connect_timeout=max(1, int(timeout))).close()
    except Exception as exc:  # psycopg.Error, or a URL it cannot parse
        lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
        return lines[0].removeprefix("connection failed: ") if lines else type(exc).__name__
    return None


# -- migrations ---------------------------------------------------------------------------------

_TABLE = "schema_migrations"


def migrate(conn: psycopg.Connection, todo: list[Migration]) -> list[str]:
    """Apply the pending migrations in order, each in its own transaction with its record (the
    shared runner's rules, fiscal/runtime/migrations.py, for PostgreSQL); the names applied now."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
        conn.execute(f"CREATE TABLE IF NOT EXISTS {_TABLE} (version INTEGER PRIMARY KEY, "
                     "name TEXT NOT NULL DEFAULT '', applied_at TEXT NOT NULL)")
        _refuse_newer(conn, todo)
    applied = []
    for m in todo:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
            if conn.execute(f"SELECT 1 FROM {_TABLE} WHERE version = %s", (m.version,)).fetchone():
                continue  # recorded already, possibly by another instance just now
            if callable(m.apply):
                m.apply(conn)
            else:
                conn.execute(m.apply)  # no parameters: the whole script in one round trip
            conn.execute(f"INSERT INTO {_TABLE} (version, name, applied_at) VALUES "
                         "(%s, %s, to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS'))",
                         (m.version, m.name))
        applied.append(m.name)
    return applied


def recorded(conn: psycopg.Connection) -> dict[int, str]:
    rows = conn.execute(f"SELECT version, name FROM {_TABLE} ORDER BY version").fetchall()
    return {r["version"]: r["name"] for r in rows}


def _refuse_newer(conn: psycopg.Connection, todo: list[Migration]) -> None:
    known = {m.version for m in PG_MIGRATIONS} | {m.version for m in todo}
    unknown = [f"{v} ({name})" if name else str(v) for v, name in recorded(conn).items() if v not in known]
    if unknown:
        raise SchemaTooNew(unknown, max(known, default=0))
