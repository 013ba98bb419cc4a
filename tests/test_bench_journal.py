"""bench/journal.py builds its large journal through the agent's own writer: what it builds must
be a journal `stalela verify` accepts, invoice for invoice, and bench/scale.py must measure it."""
from __future__ import annotations

import sqlite3

from agent import verify
from bench import scale
from bench.journal import build


def test_the_built_journal_verifies(tmp_path):
    harness, seconds = build(tmp_path / "big", 45)
    assert seconds > 0
    report = verify.verify_journal(harness.data_dir / "agent.db", harness.issuer_pub)
    assert report.ok and report.checked == 45
    conn = sqlite3.connect(harness.data_dir / "agent.db")
    ids = {r[0] for r in conn.execute("SELECT request_id FROM invoices")}
    numbers = [r[0] for r in conn.execute("SELECT fiscal_number FROM invoices ORDER BY seq")]
    conn.close()
    assert len(ids) == 45 and numbers == list(range(1, 46))  # distinct requests, numbers in order
    stored = scale.storage(harness.data_dir / "agent.db")
    assert stored["count"] == 45 and stored["body_bytes_avg"] > 0
    measured = scale.verify_rate(harness)  # the CLI, as an operator runs it
    assert measured["verify_count"] == 45 and measured["verify_rate"] > 0 and measured["verify_cpu_us"] > 0


def test_the_large_journal_table_is_measured_and_rendered(tmp_path):
    from bench import limits
    from bench.__main__ import render_scale

    harness, seconds = build(tmp_path / "big", 30)
    row = {**scale.verify_rate(harness), **scale.writer_stored_vs_empty(tmp_path, harness, 20, "t")}
    assert row["writer_full_p99_ms"] > 0 and row["writer_empty_p99_ms"] > 0
    lims = [{"verify_checked_rate": limits.checked_verification_rate(50), "commit_rate": limits.durable_commit_rate(0.1)}]
    built = {"seconds": seconds, **scale.storage(harness.data_dir / "agent.db")}
    table = render_scale([row], lims, built, None)
    assert "stalela verify, 50-invoice journal" in table and "1 invoice per commit" in table
    assert "its CPU per invoice" in table
    assert "storage per sealed 10-item invoice, 50 stored" in table  # 30 + the writer's 20


def test_the_figure_with_a_cloud_gives_the_cpu_of_each_part(tmp_path):
    # bench.scale.with_cloud on a tiny load: real agent, real cloud, the sync running. The CPU
    # per invoice of each part is read from /proc and rendered beside the rate it allows.
    from bench.__main__ import render_scale

    row = scale.with_cloud(tmp_path, 20)
    assert row["cloud_rate8"] > 0 and row["cloud_p99_8_ms"] > 0
    for part in ("daemon", "cloud", "loadgen"):  # each of these worked during the load
        assert row[f"cloud_cpu_{part}_us"] > 0, (part, row)
    for part in ("sealer", "workers"):  # these only when the sealing process / the workers took part
        assert row[f"cloud_cpu_{part}_us"] >= 0, (part, row)
    table = render_scale([row], [{"verify_checked_rate": 1.0}], {"count": 0}, None)
    assert "its CPU per invoice: agent daemon / sealing process" in table and "invoices/s" in table
