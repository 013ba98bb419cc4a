"""The repository on both backends: SQLite (a file) and PostgreSQL (a schema of this run's database).

The same `Tx` methods, the same migrations by version, the same append-only ledger, and an
upgrade of a database that already holds data.
"""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from cloud_stub.repository import LedgerEntry, Store, StoreError, open_store, sqlite_migrations
from cloud_stub.repository_pg import PG_MIGRATIONS, PgStore, redact


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request, tmp_path):
    """A function opening a store of the parametrized backend (same database at each call)."""
    if request.param == "sqlite":
        path = tmp_path / "cloud.sqlite3"
        yield lambda upto=None: Store(path, background_checkpoints=False, upto=upto)
        return
    from tests.pg.server import scratch_schema

    with scratch_schema(request.getfixturevalue("pg_database")) as url:
        yield lambda upto=None: PgStore(url, pool_size=2, upto=upto)


@pytest.fixture
def store(backend):
    """A store of the parametrized backend, opened for the test and closed after it."""
    opened = backend()
    yield opened
    opened.close()


@pytest.fixture
def backend_url(backend) -> str | None:
    """The parametrized backend's database URL for a service to open: None for SQLite (the
    service's own file in its data folder), the scratch schema's URL for PostgreSQL."""
    opened = backend()
    url = getattr(opened, "url", None)
    opened.close()
    return url


def entry(outlet: str, seq: int, number: int, *, state: str | None = "verified", mode: str = "delegated") -> LedgerEntry:
    return LedgerEntry(outlet_id=outlet, seq=seq, recorded_at=f"2026-01-0{seq}T10:00:00+00:00", mode=mode,
                       inv_type="FV", authority_id="DC-1", fiscal_number=number,
                       number_key=f"stalela:{outlet}:{number}", chain_key=f"{mode}:{outlet}",
                       sealed_at=f"2026-01-0{seq}T10:00:00+00:00", invoice_hash=f"h{number}",
                       prev_ledger_hash="p", ledger_hash=f"l{number}", invoice="{}", state=state)


def seed(tx, outlet: str = "KIN-01") -> None:
    tx.insert_merchant("A1234567B", "Shop", {"name": "Shop"}, "2026-01-01T00:00:00+00:00")
    tx.insert_outlet(outlet, "A1234567B", "Main", "Africa/Kinshasa", None, "2026-01-01T00:00:00+00:00")


def seed_version_1(tx) -> None:
    """`seed` in the SQL of schema version 1 (today's statements write columns it lacks)."""
    tx._run("INSERT INTO merchants (nif, name, taxpayer, created_at) VALUES ('A1234567B', 'Shop', '{}', ?)",
            "2026-01-01T00:00:00+00:00")
    tx._run("INSERT INTO outlets (id, merchant_nif, name, time_zone, isf, created_at) "
            "VALUES ('KIN-01', 'A1234567B', 'Main', 'Africa/Kinshasa', NULL, ?)", "2026-01-01T00:00:00+00:00")
    tx._run("INSERT INTO counters (outlet_id, next_number) VALUES ('KIN-01', 1)")


def test_both_backends_carry_the_same_migrations():
    assert [(m[0], m[1]) for m in sqlite_migrations()] == [(m.version, m.name) for m in PG_MIGRATIONS]


def test_the_same_queries_answer_the_same(store):
    with store.write() as tx:
        seed(tx)
        seed_b = tx.take_numbers("KIN-01", 5), tx.take_numbers("KIN-01", 1)
        first = tx.append(entry("KIN-01", 1, 1))
        tx.append_many([tuple(vars(entry("KIN-01", 2, 2, state=None)).values()),
                        tuple(vars(entry("KIN-01", 3, 3, state="unregistered_device")).values())])
        tx.insert_codes([("KIN-01", "C", "FV", "10.00", None), ("KIN-01", "C", "FT", "99.00", None),
                         ("KIN-01", "R", "FA", "4.00", "C")])
        flag = tx.insert_flag("KIN-01", "gap", None, [[4, 5]], "gap", "2026-01-02T00:00:00+00:00")
    with store.read() as tx:
        assert seed_b == (1, 6) and tx.next_number("KIN-01") == 7
        assert isinstance(first, int) and tx.ledger_tail("KIN-01")["seq"] == 3
        assert tx.chain_head("delegated:KIN-01")["fiscal_number"] == 3
        assert set(tx.by_number_keys([f"stalela:KIN-01:{n}" for n in range(0, 1200)])) == {
            "stalela:KIN-01:1", "stalela:KIN-01:2", "stalela:KIN-01:3"}
        assert tx.invoice_by_code("KIN-01", "C") == {"inv_type": "FV", "total": "10.00"}  # the first one
        assert tx.credited_totals("KIN-01", "C") == ["4.00"]
        # An entry of an unregistered device stays out of the totals; one of no state counts.
        period = tx.ledger_in_period("KIN-01", "2026-01-01", "2026-02-01")
        assert len(period) == 2
        assert tx.excluded_in_period("KIN-01", "2026-01-01", "2026-02-01") == {"unregistered_device": 1}
        assert tx.highest_delegated_number("KIN-01") == 3
        assert [f["id"] for f in tx.flags("KIN-01", open_only=True)] == [flag]
        assert [r["seq"] for r in tx.ledger_rows("KIN-01")] == [1, 2, 3]
        outlets = tx.outlets()
        assert [(o["id"], o["invoices"], o["open_flags"], o["next_number"]) for o in outlets] == [
            ("KIN-01", 3, 1, 7)]


def test_an_online_seals_reads_and_writes(store):
    """Tx.seal_state and Tx.append_sealed (one statement each on PostgreSQL): the same answers
    as the queries they stand for, and no number taken for a request sealed before."""
    sealed = entry("KIN-01", 1, 1, mode="cloud")
    with store.write() as tx:
        seed(tx)
    with store.write() as tx:
        tx.lock_outlet("KIN-01")
        first = tx.seal_state("KIN-01", "R-1", "cloud:KIN-01", "FV")
        assert (first.done, first.number, first.head, first.last_same, first.tail) == (None, 1, None, None, None)
        ledger_id = tx.append_sealed(sealed, ("KIN-01", "CODE1", "FV", "10.00", None),
                                     [("KIN-01", "2026-01-01", 1, 10.0, 2.0, 2.0)], "R-1", "fp-1")
    with store.write() as tx:
        tx.lock_outlet("KIN-01")
        again = tx.seal_state("KIN-01", "R-1", "cloud:KIN-01", "FV")
        assert again.done == {"fingerprint": "fp-1", "ledger_id": ledger_id} and again.number is None
    with store.write() as tx:
        tx.lock_outlet("KIN-01")
        assert tx.next_number("KIN-01") == 2  # the duplicate took no number
        nxt = tx.seal_state("KIN-01", "R-2", "cloud:KIN-01", "FT")
        assert nxt.done is None and nxt.number == 2
        assert nxt.head == {"fiscal_number": 1, "invoice_hash": "h1", "invoice": "{}",
                            "sealed_at": sealed.sealed_at}
        assert nxt.last_same is None  # no FT before
        assert nxt.tail == {"seq": 1, "ledger_hash": "l1"}
        assert tx.seal_state("KIN-01", "R-3", "cloud:KIN-01", "FV").last_same == {"invoice": "{}"}
    with store.read() as tx:
        assert tx.invoice_by_code("KIN-01", "CODE1") == {"inv_type": "FV", "total": "10.00"}
        assert tx.seal_request("KIN-01", "R-1") == {"fingerprint": "fp-1", "ledger_id": ledger_id}
        assert tx.ledger_invoice(ledger_id) == "{}"
        assert [(d["invoices"], d["net_sales"]) for d in tx._all("SELECT * FROM kpi_days")] == [(1, 10.0)]
        assert tx.next_number("KIN-01") == 4


def test_a_lookup_runs_one_statement(store):
    with store.write() as tx:
        seed(tx)
    with store.lookup() as tx:
        assert tx.outlet("KIN-01")["time_zone"] == "Africa/Kinshasa"
    if isinstance(store, PgStore):  # a second statement would not share the first one's snapshot
        with pytest.raises(RuntimeError, match="one statement"):
            with store.lookup() as tx:
                tx.outlet("KIN-01")
                tx.outlet("KIN-01")


def test_a_failed_transaction_changes_nothing(store):
    with store.write() as tx:
        seed(tx)
    with pytest.raises(RuntimeError):
        with store.write() as tx:
            tx.lock_outlet("KIN-01")
            tx.take_numbers("KIN-01", 10)
            raise RuntimeError("refused")
    with store.read() as tx:
        assert tx.next_number("KIN-01") == 1


def test_the_ledger_refuses_update_and_delete(store):
    with store.write() as tx:
        seed(tx)
        tx.append(entry("KIN-01", 1, 1))
    for sql in ("UPDATE ledger SET invoice = '[]' WHERE seq = 1", "DELETE FROM ledger WHERE seq = 1"):
        with pytest.raises(Exception, match="append-only"):
            with store.write() as tx:
                tx._run(sql)
    with store.read() as tx:
        assert [r["invoice"] for r in tx.ledger_rows("KIN-01")] == ["{}"]


def test_a_number_key_is_used_once(store):
    with store.write() as tx:
        seed(tx)
        tx.append(entry("KIN-01", 1, 1))
    with pytest.raises(Exception):
        with store.write() as tx:
            tx.append(entry("KIN-01", 2, 1))
    with store.read() as tx:
        assert tx.ledger_tail("KIN-01")["seq"] == 1


def row(e: LedgerEntry) -> tuple:
    """An `append_many` row of an entry (LedgerEntry field order)."""
    return (e.outlet_id, e.seq, e.recorded_at, e.mode, e.inv_type, e.authority_id, e.fiscal_number, e.number_key,
            e.chain_key, e.sealed_at, e.invoice_hash, e.prev_ledger_hash, e.ledger_hash, e.invoice, e.state)


def test_deferred_writes_are_read_back_and_their_errors_raised_inside_the_transaction(store):
    """Tx.writes_deferred (reconciliation's appends): a read after the writes sees them, and a
    write the database refuses fails the transaction, at the next statement or at the block's end,
    never after its commit."""
    with store.write() as tx:
        seed(tx)
    with store.write() as tx:
        tx.lock_outlet("KIN-01")
        with tx.writes_deferred():
            tx.append_many([row(entry("KIN-01", 1, 1)), row(entry("KIN-01", 2, 2))])
            assert tx.ledger_tail("KIN-01")["seq"] == 2  # the read waits for the writes
            tx.append_many([row(entry("KIN-01", 3, 3))])
        assert tx.ledger_tail("KIN-01")["seq"] == 3
    # The number of entry 1 again: refused at the next read...
    with pytest.raises(Exception):
        with store.write() as tx:
            tx.lock_outlet("KIN-01")
            with tx.writes_deferred():
                tx.append_many([row(entry("KIN-01", 4, 1))])
                tx.ledger_tail("KIN-01")
    # ... or, with no read after it, at the block's end, before the commit.
    with pytest.raises(Exception):
        with store.write() as tx:
            tx.lock_outlet("KIN-01")
            with tx.writes_deferred():
                tx.append_many([row(entry("KIN-01", 4, 4)), row(entry("KIN-01", 5, 1))])
                tx.insert_codes([("KIN-01", "C4", "FV", "1.00", None)])
            tx.insert_rejection("KIN-01", None, None, None, "x", "not reached", None, "2026-01-05T00:00:00+00:00")
    with store.read() as tx:
        assert tx.ledger_tail("KIN-01")["seq"] == 3
        assert tx.invoice_by_code("KIN-01", "C4") is None


def test_upgrading_a_version_1_database_with_data(backend):
    """Version 1 with a device bound by an agent and a ledger entry; opened by this version."""
    old = backend(upto=1)
    try:
        with old.write() as tx:
            seed_version_1(tx)
            tx._run("INSERT INTO devices (mid, nif, outlet_id, status, firmware, provisioned_at, last_seen) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)", "MID-7", "A1234567B", "KIN-01", "active", "{}",
                    "2026-01-01T00:00:00+00:00", None)
            invoice = {"id": "INV-OLD", "security": {"code": "CODE-1"}, "totals": {"total": "11.60"},
                       "reference": None}
            tx._run("INSERT INTO ledger (outlet_id, seq, recorded_at, mode, inv_type, authority_id, fiscal_number, "
                    "number_key, chain_key, sealed_at, invoice_hash, prev_ledger_hash, ledger_hash, invoice) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", "KIN-01", 1, "2026-01-01T10:00:00+00:00",
                    "device", "FV", "MID-7", 70, "device:MID-7:70", "device:MID-7", "2026-01-01T10:00:00+00:00",
                    "h", "p", "l", json.dumps(invoice))
    finally:
        old.close()
    new = backend()
    try:
        with new.read() as tx:
            # Every version since 1 applied in place (the latest schema), the data kept.
            assert [r["version"] for r in tx._all("SELECT version FROM schema_migrations ORDER BY version")] == [
                m[0] for m in sqlite_migrations()]
            assert [(d["mid"], d["bound_by"], d["unbound_at"]) for d in tx.devices("KIN-01")] == [
                ("MID-7", "agent", None)]
            assert tx.invoice_by_code("KIN-01", "CODE-1") == {"inv_type": "FV", "total": "11.60"}
            assert [(f["reason"], f["authority_id"]) for f in tx.flags("KIN-01")] == [("device_review", "MID-7")]
            assert [(r["seq"], r["state"]) for r in tx.ledger_rows("KIN-01")] == [(1, None)]
            # Version 3's expression index covers the entry appended before it.
            assert tx.ledger_seq_of_invoice("KIN-01", "INV-OLD") == 1
    finally:
        new.close()
    again = backend()  # nothing left to apply: opens as it is
    again.close()


def test_dgi_forwarding_state_on_both_backends(store):
    """The forwarder's writes (forwarding.py) on either backend: the final event is recorded once
    and the transaction goes on (a failed statement would spoil it on PostgreSQL), an invoice is
    found by its id before the forwarder reached it (even one whose JSON holds \\u0000, which
    PostgreSQL's JSON refuses), and the DGI events are append-only."""
    with store.write() as tx:
        seed(tx)
        for seq, name in ((1, "plain"), (2, "NUL \x00 in a string")):
            tx.append(LedgerEntry(**{**vars(entry("KIN-01", seq, seq)),
                                     "invoice": json.dumps({"id": f"INV-{seq}", "name": name})}))
        tx.dgi_add_queues("2026-01-01T00:00:00.000Z")
        tx.dgi_add_queues("2026-01-01T00:00:01.000Z")  # nothing more: one queue per outlet
        event = dict(outlet_id="KIN-01", seq=1, ledger_id=1, invoice_id="INV-1", kind="normalized",
                     now="2026-01-01T00:00:02.000Z")
        assert tx.dgi_add_event(**event, uid="u1", once=True) is True
        assert tx.dgi_add_event(**event, uid="u2", once=True) is False
        tx.dgi_put_submission(outlet_id="KIN-01", seq=1, ledger_id=1, invoice_id="INV-1", rn="INV-1",
                              state="normalized", uid="u1", now="2026-01-01T00:00:02.000Z")
        assert tx.dgi_lock_queue("KIN-01")["next_seq"] == 1
    with store.read() as tx:
        assert [q["outlet_id"] for q in tx.dgi_queues()] == ["KIN-01"]
        assert tx.dgi_answer("KIN-01", 1)["uid"] == "u1"
        assert tx.dgi_state_counts("KIN-01") == {"normalized": 1}
        assert tx.ledger_seq_of_invoice("KIN-01", "INV-2") == 2
        assert tx.ledger_seq_of_invoice("KIN-01", "INV-3") is None
    with pytest.raises(Exception, match="append-only"):
        with store.write() as tx:
            tx._run("UPDATE dgi_events SET uid = ? WHERE seq = ?", "u3", 1)
    with pytest.raises(Exception, match="append-only"):
        with store.write() as tx:
            tx._run("DELETE FROM dgi_events WHERE seq = ?", 1)


def test_an_outlet_is_leased_to_one_instance_at_a_time(backend):
    """Two stores on one database (two instances): while one holds the outlet's queue (recording
    an answer under its lease), the other's claim waits for it and then sees the lease taken."""
    import threading
    from datetime import datetime, timedelta, timezone

    from cloud_stub import forwarding

    a, b = backend(), backend()
    now = datetime(2026, 1, 1, tzinfo=timezone.utc)
    try:
        with a.write() as tx:
            seed(tx)
            tx.append(entry("KIN-01", 1, 1))
        forwarding.add_queues(a, now)
        claimed: list = []
        with a.write() as tx:
            tx.dgi_lock_queue("KIN-01")
            tx.dgi_take_lease("KIN-01", "A", forwarding.ts(now), forwarding.ts(now + timedelta(minutes=1)))
            other = threading.Thread(target=lambda: claimed.append(
                forwarding.claim(b, "B", ["KIN-01"], now, timedelta(minutes=1), 5)))
            other.start()
            other.join(0.5)  # B waits for A's transaction (SQLite: the write lock; PostgreSQL: the row)
        other.join(30)
        assert claimed == [[]]
        assert forwarding.outlet_status(b, "KIN-01")["leased_by"] == "A"
    finally:
        a.close()
        b.close()


def test_a_periodic_job_runs_on_one_store_at_a_time(backend):
    first, second = backend(), backend()
    try:
        with first.run_once("audit") as mine:
            assert mine
            with second.run_once("audit") as theirs:
                # PostgreSQL: the other instance waits its turn. SQLite: one process per file.
                assert theirs is isinstance(first, Store)
        with second.run_once("audit") as theirs:
            assert theirs
    finally:
        first.close()
        second.close()


def test_a_bad_database_url_is_one_clear_line(tmp_path):
    with pytest.raises(StoreError, match="unsupported database URL scheme 'mysql'"):
        open_store("mysql://root@127.0.0.1/x", tmp_path / "x.sqlite3")
    with pytest.raises(StoreError) as caught:
        open_store("postgresql://stalela:s3cret@127.0.0.1:1/nowhere", tmp_path / "x.sqlite3")
    message = str(caught.value)
    assert "cannot connect to the PostgreSQL database" in message and "s3cret" not in message
    assert "\n" not in message
    assert redact("postgresql://u:pw@h:5432/db") == "postgresql://u:***@h:5432/db"


def test_serve_refuses_a_bad_database_url(tmp_path):
    # A server that does not answer: exit 1 when connecting; a URL that is not PostgreSQL's: an
    # invalid configuration (exit 2, the key named on the line after the error's).
    for url, code, expected in (("postgresql://stalela:s3cret@127.0.0.1:1/nowhere", 1, "cannot connect"),
                                ("sqlite:///tmp/x", 2, "database.url: must be a postgresql:// URL")):
        done = subprocess.run(
            [sys.executable, "-m", "cloud_stub", "serve", "--data", str(tmp_path / "data"),
             "--port", "0", "--workers", "0", "--database-url", url],
            capture_output=True, text=True, timeout=60)
        assert done.returncode == code, done.stderr
        errors = [line for line in done.stderr.splitlines() if line.startswith("Error:")]
        assert len(errors) == 1 and expected in done.stderr, done.stderr
        assert "Traceback" not in done.stderr and "s3cret" not in done.stderr
        assert not (tmp_path / "data").exists()  # refused before anything was created


def test_the_periodic_audit_runs_on_one_instance_at_a_time(backend_url, tmp_path, clock):
    """Two services on one database: the one that finds the job taken skips its turn."""
    from cloud_stub.config import CloudConfig
    from cloud_stub.service import CloudService

    url = backend_url
    one, two = (CloudService(CloudConfig(data_dir=tmp_path / "cloud", database_url=url, verify_workers=0,
                                         audit_interval=0, clock=clock)) for _ in range(2))
    try:
        with one.store.run_once("audit"):
            assert two.periodic_audit() == ([] if url is None else None)
        assert two.periodic_audit() == []
    finally:
        one.close()
        two.close()


@pytest.mark.parametrize("named_by", ["environment", "file"])
def test_the_administration_commands_use_the_database_serve_uses(backend, backend_url, tmp_path, named_by):
    """`stalela cloud merchant add` / `outlet add` write where `serve` reads: the database named by
    STALELA_CLOUD_DATABASE_URL, or by the configuration file (`--config`, with its data folder)."""
    import os

    url = backend_url
    env = dict(os.environ)
    for name in ("STALELA_CLOUD_DATABASE_URL", "STALELA_CLOUD_CONFIG"):
        env.pop(name, None)
    data = tmp_path / "data"
    where = ["--data", str(data)]
    if named_by == "environment":
        if url is not None:
            env["STALELA_CLOUD_DATABASE_URL"] = url
    else:
        config = tmp_path / "cloud.toml"
        config.write_text(f'[server]\ndata_dir = "{data}"\n' + (f'[database]\nurl = "{url}"\n' if url else ""))
        where = ["--config", str(config)]
    for args in (["merchant", "add", "--nif", "A1234567B", "--name", "SHOP"],
                 ["outlet", "add", "--merchant", "A1234567B", "--id", "KIN-09", "--name", "NINE"]):
        done = subprocess.run([sys.executable, "-m", "cloud_stub", *args, *where],
                              capture_output=True, text=True, timeout=60, env=env)
        assert done.returncode == 0, done.stderr
    store = backend() if url is not None else Store(data / "cloud.sqlite3", background_checkpoints=False)
    try:
        with store.read() as tx:
            assert tx.outlet_ids() == ["KIN-09"]
    finally:
        store.close()
    # The SQLite file holds the ledger only when no database URL is set.
    assert (data / "cloud.sqlite3").exists() is (url is None)


def test_an_instance_with_another_issuer_key_is_refused(backend_url, tmp_path, clock):
    """One database, two data folders with two issuer keys: the second refuses to start, in
    words, once the first has issued a credential (its credentials would not verify elsewhere)."""
    from cloud_stub.config import CloudConfig
    from cloud_stub.errors import Conflict
    from cloud_stub.service import CloudService

    from cloud_helpers import new_key

    url = backend_url

    def config(folder: str) -> CloudConfig:
        data = tmp_path / folder
        if url is None and folder != "first":  # SQLite: the same file, another folder's key
            data.mkdir()
            (data / "cloud.sqlite3").symlink_to(tmp_path / "first" / "cloud.sqlite3")
        return CloudConfig(data_dir=data, database_url=url, verify_workers=0, audit_interval=0, clock=clock)

    first = CloudService(config("first"))
    try:
        first.add_merchant("A1234567B", "SHOP")
        first.add_outlet("KIN-01", "A1234567B", "ONE", isf="ISF-1")
        token = first.create_token("KIN-01")["token"]
        CloudService(config("before")).close()  # no credential yet: nothing to compare with
        enrolled = first.enroll(token, new_key()[1], "box")
        first.issue_credential(first.authenticate(enrolled["agent_token"]), block_size=5)
        with pytest.raises(Conflict, match="signed by issuer key .* but .* is key"):
            CloudService(config("after"))
        CloudService(config("first")).close()  # the same key: opens
    finally:
        first.close()


def test_text_with_u0000(store):
    """An uploaded string may carry U+0000, which PostgreSQL's text cannot hold: lookups find
    nothing and diagnostics are kept (U+FFFD in its place) on both backends; a ledger entry with
    one is refused on PostgreSQL (422, nothing written) rather than stored altered."""
    from cloud_stub.errors import Invalid

    postgresql = not isinstance(store, Store)
    with store.write() as tx:
        seed(tx)
        assert tx.credential("DC-\x00X") is None
        assert tx.count_numbers_of_authority("DC-\x00X", 1, 9) == 0
        assert tx.by_number_keys(["stalela:KIN-01:\x00", "stalela:KIN-01:\ufffd"]) == {}
        tx.insert_rejection("KIN-01", "delegated", "DC-\x00X", 1, "unknown_credential", "no DC-\x00X",
                            None, "2026-01-01T00:00:00+00:00")
        flag = tx.insert_flag("KIN-01", "bad_signature", None, [1], "why \x00", "2026-01-01T00:00:00+00:00",
                              "DC-\x00X")
        # The same authority finds its open flag again (an agent resending a batch raises no new one).
        assert [f["id"] for f in tx.open_flags_of("KIN-01", "bad_signature", "DC-\x00X")] == [flag]
    with store.read() as tx:
        kept = "\ufffd" if postgresql else "\x00"
        assert [(r["authority_id"], r["detail"]) for r in tx.rejections("KIN-01", 10)] == [
            (f"DC-{kept}X", f"no DC-{kept}X")]
    device = LedgerEntry(**{**vars(entry("KIN-01", 1, 1, mode="device")), "authority_id": "MID-\x00"})
    if postgresql:
        with pytest.raises(Invalid, match="U\\+0000"):
            with store.write() as tx:
                tx.append(device)
        with store.read() as tx:
            assert tx.ledger_tail("KIN-01") is None  # nothing written
    else:
        with store.write() as tx:
            tx.append(device)


# Writes that do not belong to one outlet's counter, chains, ledger or flags: the registry's.
# Every other write transaction of the service must hold the outlet's lock (`_writing`), or two
# instances on one PostgreSQL database could interleave on the outlet.
UNLOCKED_WRITES = {"_writing", "add_merchant", "add_outlet", "create_token", "revoke_credential", "enroll",
                   "create_provisioning_token", "provision_with_token",
                   "heartbeat",  # the agent's own row (its last heartbeat)
                   # runs an admin write under _writing(outlet_id) when given one (bind_device)
                   "_admin_write"}


def test_outlet_scoped_writes_take_the_outlet_lock():
    import ast
    import inspect

    from cloud_stub import service

    source = inspect.getsource(service)
    unlocked = {f.name for f in ast.walk(ast.parse(source)) if isinstance(f, ast.FunctionDef)
                and "self.store.write()" in ast.get_source_segment(source, f)}
    assert unlocked <= UNLOCKED_WRITES, (
        f"{sorted(unlocked - UNLOCKED_WRITES)} open a write transaction without the outlet's lock: "
        "use self._writing(outlet_id), or add the method here if it writes no outlet's state")
