"""bench/pgcloud.py measures the cloud on PostgreSQL: its databases must go away whatever happens,
its light agents' invoices must be what a real cloud accepts (through one instance and two), and
its large ledger must carry the rows the reconcile path reads (ledger and invoice codes)."""
from __future__ import annotations

import psycopg
import pytest

from bench import pgcloud
from tests.pg.server import admin_url


def _bench_databases(prefix: str) -> set[str]:
    with psycopg.connect(admin_url(), autocommit=True) as conn:
        return {r[0] for r in conn.execute("SELECT datname FROM pg_database WHERE datname LIKE %s", (prefix + "%",))}


def test_a_step_database_is_dropped_also_when_the_step_fails():
    dbs = pgcloud.Databases(admin_url())
    prefix = f"bench_{dbs.run}_"
    with dbs.scratch("ok") as url:
        assert _bench_databases(prefix) == {prefix + "ok"}
        with psycopg.connect(url) as conn:  # a session left open does not keep it alive
            conn.execute("SELECT 1")
            with pytest.raises(RuntimeError, match="the step failed"):
                with dbs.scratch("failing"):
                    raise RuntimeError("the step failed")
            assert _bench_databases(prefix) == {prefix + "ok"}
    assert _bench_databases(prefix) == set()


def test_server_problem_is_one_line_without_the_password():
    problem = pgcloud.server_problem("postgresql://bench:s3cret@127.0.0.1:1/postgres")
    assert problem and "does not answer" in problem and "s3cret" not in problem and "\n" not in problem
    assert pgcloud.server_problem(admin_url()) is None


def test_pg_limits_are_measured_and_leave_nothing_behind():
    with pgcloud.Databases(admin_url()).scratch("limits") as url:
        lim = pgcloud.pg_limits(url, seconds=0.2, clients=2)
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT to_regclass('bench_limit')").fetchone()[0] is None
    assert lim["pg_commit_rate"] > 0 and lim["pg_commit_rate_n"] > 0 and lim["pg_select1_ms"] > 0
    assert lim["pg_fsync"] in ("on", "off")


def test_the_filled_ledger_has_an_invoice_code_per_entry():
    with pgcloud.Databases(admin_url()).scratch("fill") as url:
        built = pgcloud.fill_ledger(url, 2000, lambda text: None)
        with psycopg.connect(url) as conn:
            entries, outlets = conn.execute("SELECT count(*), count(DISTINCT outlet_id) FROM ledger").fetchone()
            codes = conn.execute("SELECT count(*), count(DISTINCT code) FROM invoice_codes").fetchone()
    assert built["ledger_entries"] == entries == 2000 and outlets == built["ledger_outlets"] == 10
    assert codes == (2000, 2000)


def test_light_agents_reconcile_through_one_instance_and_two(tmp_path):
    with pgcloud.Databases(admin_url()).scratch("pair") as url:
        row = pgcloud.two_instances(tmp_path, url, outlets=2, rounds=2, per_round=4, batch=2,
                                    progress=lambda text: None)
        with psycopg.connect(url) as conn:
            stored = dict(conn.execute("SELECT outlet_id, count(*) FROM ledger GROUP BY outlet_id").fetchall())
    # Every invoice accepted (the run raises otherwise): 2 rounds of 4, after a warm-up batch to each instance.
    assert row["pair_invoices"] == 16 and stored == {"PAIR-0000": 12, "PAIR-0001": 12}
    assert row["one_rate"] > 0 and row["two_rate"] > 0


def test_a_sqlite_run_keeps_the_postgresql_section_it_did_not_measure(tmp_path):
    from argparse import Namespace

    from bench.__main__ import pg_section

    previous = tmp_path / "benchmarks.md"
    previous.write_text("# Benchmarks\n\n## Device mode\n\n| a |\n\n## The cloud on PostgreSQL\n\n"
                        "- measured: 2026-12-01, commit abc\n\n| figure | 1 |\n\n## Reading these figures\n\n* x\n")
    kept = pg_section(Namespace(cloud_db="sqlite"), previous)
    assert kept == "\n\n## The cloud on PostgreSQL\n\n- measured: 2026-12-01, commit abc\n\n| figure | 1 |"
    previous.write_text("# Benchmarks\n\n## Reading these figures\n")
    assert pg_section(Namespace(cloud_db="sqlite"), previous) == ""


@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
def test_the_online_seal_step_alone_paced_on_either_backend(backend):
    """`--only seal`: every seal answered 201 (the run raises otherwise), on its scratch database
    (dropped afterwards) or on SQLite; paced at a rate, with the CPU per seal reported."""
    before = _bench_databases("bench_")
    row = pgcloud.seal_only(admin_url(), outlets=3, per_outlet=2, backend=backend, rate=30.0,
                            progress=lambda text: None)
    assert row["seal_count"] == 6 and row["seal_offered"] == 30.0 and row["seal_rate"] > 0
    assert row["seal_cloud_cpu_us"] >= 0 and row["seal_pg_cpu_us"] >= 0
    if backend == "sqlite":
        assert row["seal_pg_cpu_us"] == 0  # no PostgreSQL counted for a cloud that does not use it
    assert _bench_databases("bench_") == before
