"""The shared migration runner (fiscal/runtime/migrations.py) on real SQLite files: databases
written by the runners it replaced open and upgrade in place, a newer database is refused."""
from __future__ import annotations

import sqlite3

import pytest

from fiscal.runtime import migrations
from fiscal.runtime.migrations import SchemaTooNew


def _plain(path):
    return sqlite3.connect(path, isolation_level=None)


def _old_agent_migrate(path, items):
    """The agent's runner before the shared one (agent/store/db.py), as it was: `_migrations`
    keyed by name, statements split on ';'."""
    conn = _plain(path)
    conn.execute("CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_at TEXT)")
    for name, sql in items:
        conn.execute("BEGIN IMMEDIATE")
        for statement in sql.split(";"):
            if statement.strip():
                conn.execute(statement)
        conn.execute("INSERT INTO _migrations(name, applied_at) VALUES (?, datetime('now'))", (name,))
        conn.execute("COMMIT")
    conn.close()


def _old_cloud_migrate(path, scripts):
    """The cloud's runner before the shared one (cloud_stub/repository.py): versions only."""
    conn = _plain(path)
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("CREATE TABLE IF NOT EXISTS schema_migrations "
                 "(version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP)")
    for version, script in enumerate(scripts, start=1):
        for statement in migrations.statements(script):
            conn.execute(statement)
        conn.execute("INSERT INTO schema_migrations (version) VALUES (?)", (version,))
    conn.execute("COMMIT")
    conn.close()


def _tables(path):
    conn = _plain(path)
    try:
        return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    finally:
        conn.close()


def test_an_agent_journal_from_the_old_runner_upgrades_in_place(tmp_path):
    from agent.store import db as store

    path = tmp_path / "agent.db"
    first = store.MIGRATIONS[:4]
    _old_agent_migrate(path, first)
    conn = _plain(path)
    conn.execute("INSERT INTO meta(key, value) VALUES ('kept', 'yes')")
    conn.close()

    applied = store.migrate(path)

    assert applied == [name for name, _ in store.MIGRATIONS[4:]]
    tables = _tables(path)
    assert "_migrations" not in tables and {"cloud_intents", "receipt_prints", "chain_anchors"} <= tables
    conn = store.connect(path)
    assert migrations.recorded(conn) == {int(n[:4]): n for n, _ in store.MIGRATIONS}
    assert conn.execute("SELECT value FROM meta WHERE key = 'kept'").fetchone()[0] == "yes"
    conn.close()
    assert store.migrate(path) == []


def test_a_fully_migrated_old_agent_journal_applies_nothing(tmp_path):
    from agent.store import db as store

    path = tmp_path / "agent.db"
    _old_agent_migrate(path, store.MIGRATIONS)
    assert store.migrate(path) == []
    conn = store.connect(path)
    assert sorted(migrations.recorded(conn).values()) == sorted(n for n, _ in store.MIGRATIONS)
    conn.close()


def test_a_cloud_ledger_from_the_old_runner_opens_and_keeps_its_data(tmp_path):
    from cloud_stub import repository

    path = tmp_path / "cloud.db"
    _old_cloud_migrate(path, repository.MIGRATIONS[:1])
    conn = _plain(path)
    conn.execute("INSERT INTO merchants(nif, name, created_at) VALUES ('A1234567B', 'Kin Shop', 'now')")
    conn.close()

    store = repository.Store(path, background_checkpoints=False)
    try:
        with store.read() as tx:
            assert tx.merchant("A1234567B")["name"] == "Kin Shop"
        conn = store._conn()
        assert migrations.recorded(conn) == {v: name for v, name, _ in repository.sqlite_migrations()}
    finally:
        store.close()


def test_an_agent_journal_newer_than_the_code_is_refused_unchanged(tmp_path):
    from agent.store import db as store

    path = tmp_path / "agent.db"
    store.migrate(path)
    conn = _plain(path)
    conn.execute("INSERT INTO schema_migrations(version, name) VALUES (99, '0099_future')")
    conn.close()
    before = _tables(path)
    with pytest.raises(store.JournalTooNew, match="newer version.*99 \\(0099_future\\)"):
        store.migrate(path)
    assert _tables(path) == before


def test_an_old_layout_journal_naming_an_unknown_migration_is_refused(tmp_path):
    from agent.store import db as store

    path = tmp_path / "agent.db"
    _old_agent_migrate(path, store.MIGRATIONS[:1] + [("0042_from_the_future", "CREATE TABLE future (x)")])
    with pytest.raises(store.JournalTooNew, match="0042_from_the_future"):
        store.migrate(path)
    assert "_migrations" in _tables(path) and "cloud_intents" not in _tables(path)


def test_a_cloud_ledger_newer_than_the_code_is_refused(tmp_path):
    from cloud_stub import repository

    path = tmp_path / "cloud.db"
    repository.Store(path, background_checkpoints=False).close()
    conn = _plain(path)
    conn.execute("INSERT INTO schema_migrations(version, name) VALUES (77, '0077')")
    conn.close()
    with pytest.raises(SchemaTooNew, match="77"):
        repository.Store(path, background_checkpoints=False)


def test_each_migration_is_its_own_transaction(tmp_path):
    path = tmp_path / "x.db"

    def broken(conn):
        conn.execute("CREATE TABLE half (x)")
        raise RuntimeError("migration 2 fails half way")

    steps = [(1, "one", "CREATE TABLE one (x);\nINSERT INTO one VALUES (1)"), (2, "two", broken),
             (3, "three", "CREATE TABLE three (x)")]
    conn = _plain(path)
    with pytest.raises(RuntimeError, match="half way"):
        migrations.migrate(conn, steps)
    assert migrations.recorded(conn) == {1: "one"}
    assert _tables(path) == {"schema_migrations", "one"}

    fixed = steps[:1] + [(2, "two", "CREATE TABLE two (x)")] + steps[2:]
    assert migrations.migrate(conn, fixed) == ["two", "three"]
    assert migrations.recorded(conn) == {1: "one", 2: "two", 3: "three"}
    conn.close()


def test_statements_keep_trigger_bodies_whole_and_accept_a_last_statement_without_semicolon():
    script = """CREATE TABLE t (x);
    CREATE TRIGGER t_no_update BEFORE UPDATE ON t BEGIN SELECT RAISE(ABORT, 'no'); END;
    CREATE INDEX t_x ON t(x)"""
    assert [s.split()[1] for s in migrations.statements(script)] == ["TABLE", "TRIGGER", "INDEX"]
    with pytest.raises(ValueError, match="incomplete"):
        migrations.statements("CREATE TRIGGER t BEFORE UPDATE ON t BEGIN SELECT 1;")


def _stalela(*args):
    import os
    import subprocess
    import sys

    from tests.support import ROOT, python_path

    return subprocess.run([sys.executable, "-m", "agent", *args], capture_output=True, text=True, cwd=ROOT,
                          env=dict(os.environ, PYTHONPATH=python_path()), timeout=60)


def _refused_in_one_line(res, *words):
    assert res.returncode == 1, res.stdout + res.stderr
    assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr
    for word in words:
        assert word in res.stderr


def test_the_clis_refuse_a_newer_database_in_one_line(tmp_path):
    from agent.identity import OutletIdentity
    from cloud_stub import repository

    cloud = tmp_path / "cloud"
    cloud.mkdir()
    repository.Store(cloud / "cloud.sqlite3", background_checkpoints=False).close()
    agent = tmp_path / "agent"
    assert _stalela("agent", "init", "--data", str(agent)).returncode == 0
    OutletIdentity(outlet_id="KIN-01", outlet_name="Gombe", merchant_nif="A1234567B", merchant_name="ABC",
                   time_zone="Africa/Kinshasa", isf="STL-KIN-01", agent_id="a-1", issuer_public_key="x",
                   taxpayer={}).save(agent / "enrollment.json")
    for db in (cloud / "cloud.sqlite3", agent / "agent.db"):
        conn = _plain(db)
        conn.execute("INSERT INTO schema_migrations(version, name) VALUES (99, '0099_future')")
        conn.close()

    _refused_in_one_line(_stalela("cloud", "outlets", "--data", str(cloud)), "newer version", "0099_future")
    _refused_in_one_line(_stalela("agent", "keys", "list", "--data", str(agent)), "newer version", "agent.db")


def test_an_up_to_date_database_opens_read_only(tmp_path):
    # A reader that may not write the file (another user's journal) must still get through.
    path = tmp_path / "x.db"
    steps = [(1, "one", "CREATE TABLE one (x)")]
    conn = _plain(path)
    assert migrations.migrate(conn, steps) == ["one"]
    conn.close()
    ro = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
    try:
        assert migrations.migrate(ro, steps) == []
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            migrations.migrate(ro, steps + [(2, "two", "CREATE TABLE two (x)")])
    finally:
        ro.close()
