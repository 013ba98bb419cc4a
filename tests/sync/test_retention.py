"""Retention: acknowledged invoices are discarded after the window, the chain still verifies."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

from agent.retention import discard_acknowledged
from tests.support import invoice


def _seal(h, n):
    return [h.post("/v1/invoices", invoice(f"RT-{i}"))[1] for i in range(n)]


def _ack(h, ids, when):
    conn = h.db()
    conn.executemany("UPDATE invoices SET sync_state='accepted', synced_at=? WHERE id=?",
                     [(when.isoformat(), i) for i in ids])
    conn.close()


def test_only_acknowledged_and_old_invoices_go_and_verify_still_passes(harness):
    harness.add_credential(harness.credential(1, 100))
    harness.start()
    bodies = _seal(harness, 10)
    harness.stop()
    old = datetime.now(timezone.utc) - timedelta(days=31)
    # Acknowledged long ago: 1..6; 7 acknowledged yesterday; 8..10 never acknowledged.
    _ack(harness, [b["id"] for b in bodies[:6]], old)
    _ack(harness, [bodies[6]["id"]], datetime.now(timezone.utc) - timedelta(days=1))
    conn = harness.db()
    conn.execute("BEGIN IMMEDIATE")
    n = discard_acknowledged(conn, 30)
    conn.execute("COMMIT")
    left = [r[0] for r in conn.execute("SELECT fiscal_number FROM invoices ORDER BY seq")]
    conn.close()
    assert n == 6 and left == [7, 8, 9, 10]
    res = harness.verify()
    assert res.returncode == 0, res.stderr
    # A retry of a discarded sale never gets a second number.
    harness.start()
    status, body, _ = harness.post("/v1/invoices", invoice("RT-2"))
    assert status == 409 and "discarded" in body["detail"]
    assert harness.post("/v1/invoices", invoice("RT-new"))[1]["security"]["fiscal_number"] == 11
    harness.stop()
    assert harness.verify().returncode == 0


def test_unacknowledged_invoices_are_never_discarded(harness):
    harness.add_credential(harness.credential(1, 100))
    harness.start()
    _seal(harness, 5)
    harness.stop()
    conn = harness.db()
    conn.execute("BEGIN IMMEDIATE")
    n = discard_acknowledged(conn, 0, now=datetime.now(timezone.utc) + timedelta(days=365))
    conn.execute("COMMIT")
    conn.close()
    assert n == 0 and len(harness.numbers()) == 5


def test_tampering_after_discard_is_still_detected(harness):
    harness.add_credential(harness.credential(1, 100))
    harness.start()
    bodies = _seal(harness, 6)
    harness.stop()
    _ack(harness, [b["id"] for b in bodies[:3]], datetime.now(timezone.utc) - timedelta(days=40))
    conn = harness.db()
    conn.execute("BEGIN IMMEDIATE")
    discard_acknowledged(conn, 30)
    conn.execute("COMMIT")
    # Removing the first remaining invoice breaks the link to the anchor.
    conn.execute("DELETE FROM invoices WHERE id = ?", (bodies[3]["id"],))
    conn.close()
    res = harness.verify()
    assert res.returncode == 1 and "chain broken" in res.stderr
