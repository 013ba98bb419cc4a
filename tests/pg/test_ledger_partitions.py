"""The PostgreSQL ledger partitioned by month (schema version 6, cloud_stub/ledger_partitions.py):
a populated ledger of version 5 converted in place and still verifiable, entries in their
month's partition, the fiscal invariants held across partitions by `ledger_keys`, the partition
job (ahead, idempotent, once across instances), and an archived month leaving the rest verifiable."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
from datetime import datetime, timezone

import psycopg
import pytest

from cloud_stub import ledger_partitions, repository_pg
from cloud_stub.config import CloudConfig
from cloud_stub.errors import CloudError
from cloud_stub.ledger_partitions import partition_name
from cloud_stub.repository import LedgerEntry
from cloud_stub.repository_pg import PgStore
from cloud_stub.service import CloudService

from tests.cloud.cloud_helpers import Clock, invoice_request, new_key
from tests.cloud.test_repository_backends import entry, seed
from tests.pg.server import scratch_database
from tests.support import ROOT, python_path

NOW = datetime.now(timezone.utc).replace(microsecond=0)


def months_back(n: int) -> datetime:
    """Noon on the 10th, `n` months before this one (the partitions the migration creates
    reach from the oldest entry's month to two months after the real current one)."""
    year, month = NOW.year, NOW.month - n
    while month < 1:
        year, month = year - 1, month + 12
    return datetime(year, month, 10, 12, tzinfo=timezone.utc)


@pytest.fixture
def database():
    with scratch_database() as url:
        yield url


def service(url: str, tmp_path, clock: Clock) -> CloudService:
    return CloudService(CloudConfig(data_dir=tmp_path / "cloud", database_url=url, verify_workers=0,
                                    audit_interval=0, clock=clock))


def enrolled(cloud: CloudService, outlet_id: str) -> dict:
    token = cloud.create_token(outlet_id)["token"]
    return cloud.authenticate(cloud.enroll(token, new_key()[1], "box")["agent_token"])


def where(url: str) -> list[tuple]:
    """(outlet, seq, partition) of every entry."""
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT outlet_id, seq, tableoid::regclass::text FROM ledger "
                            "ORDER BY outlet_id, seq").fetchall()


def test_a_populated_ledger_of_version_5_is_partitioned_in_place(database, tmp_path, monkeypatch):
    clock = Clock(months_back(2))
    with monkeypatch.context() as m:
        m.setattr(repository_pg, "PG_MIGRATIONS", repository_pg.PG_MIGRATIONS[:5])
        old = service(database, tmp_path, clock)
        old.add_merchant("A1234567B", "SHOP")
        for outlet in ("KIN-01", "KIN-02"):
            old.add_outlet(outlet, "A1234567B", outlet, isf="ISF-1")
        agents = {outlet: enrolled(old, outlet) for outlet in ("KIN-01", "KIN-02")}
        retried = invoice_request(request_id="R-1")
        first, _ = old.seal(agents["KIN-01"], retried)
        old.seal(agents["KIN-02"], invoice_request())
        clock.advance(days=31)
        for _ in range(2):
            old.seal(agents["KIN-01"], invoice_request())
        old.close()
    with psycopg.connect(database) as conn:
        assert conn.execute("SELECT relkind FROM pg_class WHERE oid = 'ledger'::regclass").fetchone()[0] == "r"
        before = conn.execute("SELECT id, outlet_id, seq, ledger_hash FROM ledger ORDER BY id").fetchall()

    new = service(database, tmp_path, clock)  # migrates through version 6 to the newest
    try:
        with psycopg.connect(database) as conn:
            assert conn.execute("SELECT relkind FROM pg_class WHERE oid = 'ledger'::regclass").fetchone()[0] == "p"
            applied = [r[0] for r in conn.execute("SELECT version FROM schema_migrations ORDER BY version")]
            assert applied == [m.version for m in repository_pg.PG_MIGRATIONS] and 6 in applied
            # Every entry still there, ids kept, each in its month's partition.
            assert conn.execute("SELECT id, outlet_id, seq, ledger_hash FROM ledger ORDER BY id").fetchall() == before
            assert conn.execute("SELECT count(*) FROM ledger_keys").fetchone()[0] == len(before)
        old_month, next_month = partition_name(months_back(2).date()), partition_name(months_back(1).date())
        assert where(database) == [("KIN-01", 1, old_month), ("KIN-01", 2, next_month), ("KIN-01", 3, next_month),
                                   ("KIN-02", 1, old_month)]
        for outlet, count in (("KIN-01", 3), ("KIN-02", 1)):
            assert new.verify_ledger(outlet) == {"outlet_id": outlet, "entries": count, "archived": 0, "valid": True,
                                                 "problems": []}
        # The ledger goes on: a retried request is answered as before, a new one lands this month.
        clock.now = NOW
        again, created = new.seal(agents["KIN-01"], retried)
        assert (again, created) == (first, False)
        new.seal(agents["KIN-01"], invoice_request())
        assert where(database)[3] == ("KIN-01", 4, partition_name(NOW.date()))
        with psycopg.connect(database) as conn:
            assert conn.execute("SELECT max(id) FROM ledger").fetchone()[0] > max(r[0] for r in before)
    finally:
        new.close()
    # `stalela cloud verify`, as an operator runs it, on the upgraded ledger.
    env = {**os.environ, "STALELA_CLOUD_DATABASE_URL": database, "PYTHONPATH": python_path()}
    done = subprocess.run([sys.executable, "-m", "agent", "cloud", "verify", "--data", str(tmp_path / "cloud"),
                           "--outlet", "KIN-01"], capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "valid: 4 entries" in done.stdout


def test_the_fiscal_invariants_hold_across_partitions(database):
    store = PgStore(database, pool_size=2)
    try:
        with store.write() as tx:
            seed(tx)
            tx.append(entry("KIN-01", 1, 1))  # recorded 2026-01-01: before the partitions, the default
        in_another_month = {"recorded_at": NOW.isoformat()}  # this month's partition
        for clash, what in ((dict(seq=2, number_key="stalela:KIN-01:1"), "ledger_keys_number_key_key"),
                            (dict(seq=1, number_key="stalela:KIN-01:2"), "ledger_keys_outlet_id_seq_key")):
            with pytest.raises(psycopg.errors.UniqueViolation, match=what):
                with store.write() as tx:
                    tx.append(LedgerEntry(**{**vars(entry("KIN-01", 1, 1)), **in_another_month,
                                                           **clash}))
        with store.write() as tx:
            second = tx.append(LedgerEntry(**{**vars(entry("KIN-01", 2, 2)), **in_another_month}))
            tx.insert_seal_request("KIN-01", "R-1", "f", second)
        with pytest.raises(psycopg.errors.UniqueViolation):
            with store.write() as tx:
                tx.insert_seal_request("KIN-01", "R-1", "f", 1)  # the same request for the entry of January
        with pytest.raises(psycopg.errors.ForeignKeyViolation):
            with store.write() as tx:
                tx.insert_seal_request("KIN-01", "R-2", "f", 999)  # no such entry
        assert where(database) == [("KIN-01", 1, "ledger_default"), ("KIN-01", 2, partition_name(NOW.date()))]
        with store.read() as tx:
            assert [r["seq"] for r in tx.ledger_rows("KIN-01")] == [1, 2]
    finally:
        store.close()


def test_the_partition_job_creates_ahead_once_and_idempotently(database, tmp_path):
    one, two = PgStore(database, pool_size=2), PgStore(database, pool_size=2)
    try:
        assert one.ensure_ledger_partitions(datetime(2031, 11, 3, tzinfo=timezone.utc)) == [
            "ledger_2031_11", "ledger_2031_12", "ledger_2032_01"]
        assert one.ensure_ledger_partitions(datetime(2031, 11, 30, tzinfo=timezone.utc)) == []
        # Another instance running the job: this one skips its turn.
        with one.run_once("ledger-partitions"):
            assert two.ensure_ledger_partitions(datetime(2035, 1, 1, tzinfo=timezone.utc)) is None
        # Two instances at once: the partitions are created once, and neither fails.
        results: list = []
        start = threading.Barrier(2)

        def job(store: PgStore) -> None:
            start.wait()
            results.append(store.ensure_ledger_partitions(datetime(2033, 5, 1, tzinfo=timezone.utc)))

        threads = [threading.Thread(target=job, args=(s,)) for s in (one, two)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        created = sorted(name for r in results if r for name in r)
        assert created == ["ledger_2033_05", "ledger_2033_06", "ledger_2033_07"]
        # A month whose entries already went to the default partition keeps them there.
        with one.write() as tx:
            seed(tx)
            tx.append(LedgerEntry(**{**vars(entry("KIN-01", 1, 1)),
                                                   "recorded_at": "2036-02-11T00:00:00+00:00"}))
        assert one.ensure_ledger_partitions(datetime(2036, 2, 1, tzinfo=timezone.utc)) == [
            "ledger_2036_03", "ledger_2036_04"]
        assert where(database) == [("KIN-01", 1, "ledger_default")]
    finally:
        one.close()
        two.close()
    # The service's periodic job creates them on its beat.
    clock = Clock(datetime(2040, 6, 1, tzinfo=timezone.utc))
    cloud = service(database, tmp_path, clock)
    try:
        cloud.periodic_audit()
        with psycopg.connect(database) as conn:
            assert conn.execute("SELECT to_regclass('ledger_2040_08') IS NOT NULL").fetchone()[0]
    finally:
        cloud.close()


def _two_months(database, tmp_path) -> tuple[CloudService, dict, list[dict]]:
    """A cloud with outlet KIN-01: 3 invoices sealed last month, 2 this month (the invoices of
    last month returned). KIN-02 has 1 invoice last month only."""
    clock = Clock(months_back(1))
    cloud = service(database, tmp_path, clock)
    cloud.add_merchant("A1234567B", "SHOP")
    for outlet in ("KIN-01", "KIN-02"):
        cloud.add_outlet(outlet, "A1234567B", outlet, isf="ISF-1")
    agent, other = enrolled(cloud, "KIN-01"), enrolled(cloud, "KIN-02")
    cloud.periodic_audit()  # last month's partition (the migration started at this one)
    archived = [cloud.seal(agent, invoice_request())[0] for _ in range(3)]
    cloud.seal(other, invoice_request())
    clock.now = NOW
    for _ in range(2):
        cloud.seal(agent, invoice_request())
    return cloud, agent, archived


def test_an_archived_month_leaves_the_rest_verifiable(database, tmp_path):
    cloud, _, archived = _two_months(database, tmp_path)
    try:
        old = partition_name(months_back(1).date())
        done = cloud.archive_ledger_month(old[7:].replace("_", "-"))
        assert (done["partition"], done["entries"], done["outlets"]) == (old, 4, 2)
        assert [(a["partition"], a["entries"], a["table_present"]) for a in cloud.ledger_archives()] == [(old, 4, True)]
        with psycopg.connect(database) as conn:  # per outlet, with its merchant (ready to shard)
            assert conn.execute("SELECT outlet_id, merchant_nif, first_seq, last_seq, entries FROM "
                                "ledger_archived_ranges ORDER BY outlet_id").fetchall() == [
                ("KIN-01", "A1234567B", 1, 3, 3), ("KIN-02", "A1234567B", 1, 1, 1)]
        # The operator's dump, then the drop (docs/cloud-scaling.md).
        with psycopg.connect(database, autocommit=True) as conn:
            assert conn.execute(f"SELECT count(*) FROM {old}").fetchone()[0] == 4  # detached, whole
            conn.execute(f"DROP TABLE {old}")
        assert cloud.ledger_archives()[0]["table_present"] is False
        assert cloud.verify_ledger("KIN-01") == {"outlet_id": "KIN-01", "entries": 2, "archived": 3, "valid": True,
                                                 "problems": []}
        assert cloud.verify_ledger("KIN-02") == {"outlet_id": "KIN-02", "entries": 0, "archived": 1, "valid": True,
                                                 "problems": []}
        # An archived entry's number stays used.
        number = archived[0]["security"]["fiscal_number"]
        with pytest.raises(psycopg.errors.UniqueViolation):
            with cloud.store.write() as tx:
                tx.append(LedgerEntry(**{**vars(entry("KIN-01", 9, number)),
                                                       "number_key": _number_key(database, 1)}))
        # What remains is still checked: a tampered entry after the archive is caught.
        with psycopg.connect(database, autocommit=True) as conn:
            conn.execute("ALTER TABLE ledger DISABLE TRIGGER USER")
            conn.execute("UPDATE ledger SET ledger_hash = 'x' WHERE seq = 4")
        result = cloud.verify_ledger("KIN-01")
        assert not result["valid"] and result["problems"]
    finally:
        cloud.close()


def test_a_month_removed_without_the_archive_command_is_reported_missing(database, tmp_path):
    # What a superuser (or a mistaken script) can do: the month's table leaves the ledger with no
    # record of an archive. Its keys stay behind, but verify no longer takes them as an anchor.
    cloud, _, _ = _two_months(database, tmp_path)
    try:
        old = partition_name(months_back(1).date())
        with psycopg.connect(database, autocommit=True) as conn:
            conn.execute(f"ALTER TABLE ledger DETACH PARTITION {old}")
            conn.execute(f"DROP TABLE {old}")
        result = cloud.verify_ledger("KIN-01")
        assert not result["valid"] and result["archived"] == 0
        assert result["problems"][0].startswith("seq 4: expected 1")
    finally:
        cloud.close()


def test_archiving_refuses_what_would_break_a_chain_and_changes_nothing(database, tmp_path):
    cloud, _, _ = _two_months(database, tmp_path)
    try:
        last = months_back(1).strftime("%Y-%m")
        refusals = {
            NOW.strftime("%Y-%m"): "only a past month",
            months_back(2).strftime("%Y-%m"): "there is no partition",
            "2026-13": "YYYY-MM",
            "26-01": "YYYY-MM",
        }
        for month, reason in refusals.items():
            with pytest.raises(CloudError) as refused:
                cloud.archive_ledger_month(month)
            assert reason in refused.value.detail, (month, refused.value.detail)
        assert cloud.ledger_archives() == []
        assert [r[2] for r in where(database)].count(partition_name(months_back(1).date())) == 4

        cloud.archive_ledger_month(last)
        with pytest.raises(CloudError) as again:
            cloud.archive_ledger_month(last)
        assert "was archived at" in again.value.detail

        # Older months' partitions (the job run with a clock three months back): the oldest first.
        cloud.config.clock.now = months_back(3)
        cloud.periodic_audit()
        with pytest.raises(CloudError) as not_oldest:
            cloud.archive_ledger_month(months_back(2).strftime("%Y-%m"))
        assert f"archive the oldest month first: {partition_name(months_back(3).date())}" in not_oldest.value.detail

        # An entry of a month long before, kept in the default partition: archiving a later
        # month would leave a hole before it in its outlet's chain.
        with cloud.store.write() as tx:
            tx.lock_outlet("KIN-02")
            tx.append(LedgerEntry(**{**vars(entry("KIN-02", 2, 99)), "recorded_at": "2001-01-05T10:00:00+00:00"}))
        with pytest.raises(CloudError) as hole:
            cloud.archive_ledger_month(months_back(3).strftime("%Y-%m"))
        assert "the default partition holds entries recorded before" in hole.value.detail
        assert [a["partition"] for a in cloud.ledger_archives()] == [partition_name(months_back(1).date())]
    finally:
        cloud.close()


def test_a_month_with_an_entry_missing_is_not_archived(database, tmp_path):
    # An entry of the month deleted behind the ledger's back (triggers off): archiving the month
    # would record a range with a hole as archived. Refused, naming the outlet; nothing recorded.
    cloud, _, _ = _two_months(database, tmp_path)
    try:
        old = partition_name(months_back(1).date())
        with psycopg.connect(database, autocommit=True) as conn:
            conn.execute(f"ALTER TABLE {old} DISABLE TRIGGER USER")
            conn.execute(f"DELETE FROM {old} WHERE outlet_id = 'KIN-01' AND seq = 2")
        with pytest.raises(CloudError) as refused:
            cloud.archive_ledger_month(months_back(1).strftime("%Y-%m"))
        assert "outlet KIN-01's entries" in refused.value.detail and "stalela cloud verify" in refused.value.detail
        assert cloud.ledger_archives() == []
        assert old in [r[2] for r in where(database)]  # still attached
    finally:
        cloud.close()


def test_a_month_restored_and_attached_again_is_verified_whole(database, tmp_path):
    cloud, _, _ = _two_months(database, tmp_path)
    try:
        last = months_back(1).date()
        old = partition_name(last)
        cloud.archive_ledger_month(last.strftime("%Y-%m"))
        with psycopg.connect(database, autocommit=True) as conn:
            conn.execute(f"ALTER TABLE ledger ATTACH PARTITION {old} FOR VALUES FROM ('{last:%Y-%m}') "
                         f"TO ('{NOW:%Y-%m}')")
        assert cloud.verify_ledger("KIN-01") == {"outlet_id": "KIN-01", "entries": 5, "archived": 0, "valid": True,
                                                 "problems": []}
    finally:
        cloud.close()


def test_the_archive_commands_as_an_operator_runs_them(database, tmp_path):
    cloud, _, _ = _two_months(database, tmp_path)
    cloud.close()
    last = months_back(1).strftime("%Y-%m")
    env = {**os.environ, "STALELA_CLOUD_DATABASE_URL": database}
    data = str(tmp_path / "cloud")

    def stalela(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "agent", "cloud", *args, "--data", data], env=env,
                              capture_output=True, text=True, cwd=ROOT, timeout=60)

    done = stalela("ledger", "archive", "--month", last)
    old = partition_name(months_back(1).date())
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"{old}: 4 entries of 2 outlet(s) detached")
    assert f"pg_dump --format=custom --table={old}" in done.stderr and f"DROP TABLE {old}" in done.stderr
    listed = stalela("ledger", "archives")
    assert listed.returncode == 0 and "table still in the database" in listed.stdout
    verified = stalela("verify", "--outlet", "KIN-01")
    assert verified.returncode == 0 and "valid: 2 entries after 3 archived" in verified.stdout
    refused = stalela("ledger", "archive", "--month", last)
    assert refused.returncode == 1 and "was archived at" in refused.stderr and "Traceback" not in refused.stderr


def _number_key(url: str, seq: int) -> str:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT number_key FROM ledger_keys WHERE outlet_id = 'KIN-01' AND seq = %s",
                            (seq,)).fetchone()[0]


def test_two_archives_of_one_month_at_once_archive_it_once_and_refuse_the_other_cleanly(database, tmp_path):
    cloud, _, _ = _two_months(database, tmp_path)
    try:
        month = months_back(1).strftime("%Y-%m")
        # The first archive's transaction is held open (its work done, not committed yet) while a
        # second operator archives the same month.
        first = psycopg.connect(database, row_factory=psycopg.rows.dict_row)
        outer = first.transaction()
        outer.__enter__()
        done = ledger_partitions.archive_month(first, months_back(1).date(), NOW.isoformat())
        second: dict = {}

        def archive_again():
            try:
                second["ok"] = cloud.archive_ledger_month(month)
            except CloudError as exc:
                second["error"] = exc

        t = threading.Thread(target=archive_again)
        t.start()
        t.join(1.0)
        assert t.is_alive()  # it waits for the first
        outer.__exit__(None, None, None)  # commit
        first.close()
        t.join(30)
        assert "ok" not in second
        assert second["error"].status == 409 and "was archived at" in second["error"].detail
        assert [(a["partition"], a["entries"]) for a in cloud.ledger_archives()] == [(done["partition"], 4)]
    finally:
        cloud.close()
