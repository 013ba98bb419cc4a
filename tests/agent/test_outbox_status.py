"""The outbox's status (GET /v1/sync, /v1/health, the status page, `stalela sync status`) on a
real journal: pending counts sealed invoices only, oldest is the first still pending, and the
count comes from the index alone. Health reads it every second on the daemon's event loop, so a
count that reads every pending row (≈ 60 ms at 100,000 after an outage) stalls every sale."""
from __future__ import annotations

from agent import outbox
from agent.config import load_config
from agent.service import AgentService
from agent.store.db import connect
from tests.support import invoice


def test_pending_is_the_sealed_invoices_not_yet_acknowledged_counted_from_the_index(harness):
    harness.add_credential(harness.credential(1, 100))
    service = AgentService.open(load_config(harness.data_dir))
    try:
        sealed = [service.journal.submit(service.prepare(invoice(f"P-{i}"))).result(10).invoice for i in range(4)]
        draft = service.prepare(invoice("D-1"))
        service.journal.run_in_writer(lambda conn: service.journal.queue_draft(conn, draft)).result(10)
    finally:
        service.close()
    conn = connect(harness.data_dir / "agent.db")
    try:
        with conn:
            conn.execute("UPDATE invoices SET sync_state = 'accepted' WHERE id = ?", (sealed[0]["id"],))
        assert conn.execute("SELECT count(*) FROM invoices WHERE status = 'queued'").fetchone()[0] == 1
        statements: list[str] = []
        conn.set_trace_callback(statements.append)
        status = outbox.status(conn)
        conn.set_trace_callback(None)
        assert (status["pending"], status["synced"], status["quarantined"]) == (3, 1, 0)  # not the draft
        assert status["oldest_pending"] == sealed[1]["security"]["timestamp"]
        counts = [s for s in statements if "count(" in s and "pending" in s]
        assert counts
        for sql in counts:
            plan = " ".join(row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + sql))
            assert "COVERING INDEX" in plan, (sql, plan)
        with conn:
            conn.execute("UPDATE invoices SET sync_state = 'accepted' WHERE status = 'sealed'")
        assert (outbox.status(conn)["pending"], outbox.status(conn)["oldest_pending"]) == (0, None)
    finally:
        conn.close()
