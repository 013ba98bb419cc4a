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
    assert measured["verify_count"] == 45 and measured["verify_rate"] > 0
