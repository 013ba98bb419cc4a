"""`stalela verify` checks each invoice's own content in several processes on a large journal:
the faults it reports must be exactly those of the one-process pass, in the same order."""
from __future__ import annotations

import sqlite3

import pytest

from agent import verify
from agent.store.bodies import pack, unpack
from tests.support import invoice


@pytest.fixture
def journal(harness):
    harness.add_credential(harness.credential(1, 100))
    harness.start()
    sealed = [harness.post("/v1/invoices", invoice(f"P{i}"))[1] for i in range(14)]
    harness.stop()
    return harness, sealed


def _both_ways(harness, monkeypatch, **kw):
    one = verify.verify_journal(harness.data_dir / "agent.db", harness.issuer_pub, **kw)
    monkeypatch.setattr(verify, "PARALLEL_FROM", 1)
    monkeypatch.setattr(verify, "_CHUNK", 4)  # 14 invoices in 4 tasks
    many = verify.verify_journal(harness.data_dir / "agent.db", harness.issuer_pub, **kw)
    monkeypatch.undo()
    return one, many


def test_a_clean_journal_verifies_both_ways(journal, monkeypatch):
    harness, _ = journal
    one, many = _both_ways(harness, monkeypatch)
    assert one.ok and many.ok and one.checked == many.checked == 14


def test_the_same_faults_in_the_same_order(journal, monkeypatch):
    harness, sealed = journal
    conn = sqlite3.connect(harness.data_dir / "agent.db")
    # Alter the content of one invoice, damage another's stored bytes, delete a third.
    raw = unpack(conn.execute("SELECT body FROM invoices WHERE id = ?", (sealed[3]["id"],)).fetchone()[0])
    conn.execute("UPDATE invoices SET body = ? WHERE id = ?",
                 (pack(raw.replace('"name":"Jan"', '"name":"Jon"')), sealed[3]["id"]))
    conn.execute("UPDATE invoices SET body = x'01ff00' WHERE id = ?", (sealed[7]["id"],))
    conn.execute("DELETE FROM invoices WHERE id = ?", (sealed[11]["id"],))
    conn.commit()
    conn.close()
    one, many = _both_ways(harness, monkeypatch, stop_at_first=False)
    assert [str(f) for f in one.faults] == [str(f) for f in many.faults]
    text = "\n".join(str(f) for f in many.faults)
    assert sealed[3]["id"] in text and "chain hash" in text
    assert sealed[7]["id"] in text and "unreadable" in text
    assert sealed[12]["id"] in text and "chain broken" in text
    first, _ = _both_ways(harness, monkeypatch)  # stop at the first fault: the altered invoice
    assert len(first.faults) == 1 and sealed[3]["id"] in str(first.faults[0])
