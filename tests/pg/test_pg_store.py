"""PostgreSQL-only properties of the store: the outlet lock across connections, dropped connections."""
from __future__ import annotations

import threading
import time

import psycopg
import pytest

from cloud_stub.repository_pg import PG_MIGRATIONS, PgStore

from tests.pg.server import scratch_database


@pytest.fixture
def store():
    with scratch_database() as url:
        store = PgStore(url, pool_size=2)
        with store.write() as tx:
            tx.insert_merchant("A1234567B", "Shop", {}, "2026-01-01T00:00:00+00:00")
            for outlet in ("KIN-01", "KIN-02"):
                tx.insert_outlet(outlet, "A1234567B", outlet, "Africa/Kinshasa", None, "2026-01-01T00:00:00+00:00")
        try:
            yield store
        finally:
            store.close()


def waiting_on_a_lock(url: str) -> int:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                            "AND wait_event_type = 'Lock'").fetchone()[0]


def wait_until(predicate, what: str) -> None:
    deadline = time.monotonic() + 30  # a bound for a broken build, not a measurement
    while not predicate():
        assert time.monotonic() < deadline, f"never {what}"
        time.sleep(0.02)


def test_the_outlet_lock_makes_the_second_writer_read_after_the_first(store):
    """Both read the tail and append after it: the second waits, then sees the first's entry."""
    from tests.cloud.test_repository_backends import entry

    seen: list[int] = []

    def writer() -> None:
        with store.write() as tx:
            tx.lock_outlet("KIN-01")
            tail = tx.ledger_tail("KIN-01")
            seq = tail["seq"] + 1 if tail else 1
            seen.append(seq)
            tx.append(entry("KIN-01", seq, 100 + seq))

    with store.write() as tx:
        tx.lock_outlet("KIN-01")
        second = threading.Thread(target=writer)
        second.start()
        wait_until(lambda: waiting_on_a_lock(store.url) == 1, "waited on the outlet's lock")
        with store.write() as other:  # another outlet is not held up
            other.lock_outlet("KIN-02")
            other.take_numbers("KIN-02", 1)
        tail = tx.ledger_tail("KIN-01")
        assert tail is None
        tx.append(entry("KIN-01", 1, 101))
        seen.append(1)
    second.join(timeout=30)
    assert seen == [1, 2]
    with store.read() as tx:
        assert [r["seq"] for r in tx.ledger_rows("KIN-01")] == [1, 2]


def test_a_connection_the_server_dropped_is_replaced(store):
    with store.read() as tx:
        assert tx.outlet_ids() == ["KIN-01", "KIN-02"]
    with psycopg.connect(store.url, autocommit=True) as admin:
        # With a timeout, pg_terminate_backend returns once the backend is gone: the server has
        # dropped the connection (its goodbye is on the socket) before the next loan.
        dropped = admin.execute("SELECT count(pg_terminate_backend(pid, 10000)) FROM pg_stat_activity "
                                "WHERE datname = current_database() AND pid <> pg_backend_pid()").fetchone()[0]
    assert dropped >= 1
    with store.read() as tx:  # not an error: the pool checked the connection and opened another
        assert tx.outlet_ids() == ["KIN-01", "KIN-02"]


def test_a_connection_used_just_now_is_lent_without_a_round_trip(store, monkeypatch):
    """The pool's check (repository_pg._check): a round trip only for a connection idle for long
    or whose socket has something to read (the server's goodbye)."""
    import cloud_stub.repository_pg as pg

    round_trips = []
    real = pg.ConnectionPool.check_connection
    monkeypatch.setattr(pg.ConnectionPool, "check_connection",
                        staticmethod(lambda conn: (round_trips.append(conn), real(conn))[1]))
    with psycopg.connect(store.url, autocommit=True) as conn:
        pg._returned(conn)
        pg._check(conn)
        assert round_trips == []
        conn._stalela_returned_at -= pg.FULL_CHECK_IDLE + 1
        pg._check(conn)
        assert round_trips == [conn]
        pg._returned(conn)
        with psycopg.connect(store.url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s, 10000)", (conn.info.backend_pid,))
        with pytest.raises(psycopg.OperationalError):
            pg._check(conn)
        assert len(round_trips) == 2


def test_instances_starting_together_migrate_once():
    """Four stores open one empty database at once: each migration is applied and recorded once."""
    with scratch_database() as url:
        stores: list[PgStore] = []
        errors: list[BaseException] = []

        def open_one() -> None:
            try:
                stores.append(PgStore(url, pool_size=1))
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=open_one) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        try:
            assert not errors and len(stores) == 4
            with stores[0].read() as tx:
                assert [(r["version"], r["name"]) for r in tx._all(
                    "SELECT version, name FROM schema_migrations ORDER BY version")] == [
                    (m.version, m.name) for m in PG_MIGRATIONS]  # each applied once
        finally:
            for store in stores:
                store.close()


def test_a_database_of_a_newer_version_is_refused_unchanged():
    from fiscal.runtime.migrations import SchemaTooNew

    with scratch_database() as url:
        PgStore(url, pool_size=1).close()
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("INSERT INTO schema_migrations (version, name, applied_at) VALUES (99, '0099', 'x')")
        with pytest.raises(SchemaTooNew, match="99"):
            PgStore(url, pool_size=1)
        with psycopg.connect(url) as conn:
            assert [r[0] for r in conn.execute("SELECT version FROM schema_migrations ORDER BY version")] == [
                m.version for m in PG_MIGRATIONS] + [99]
