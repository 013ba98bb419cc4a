"""The phase 1 invoices kept for their confirm (agent/emcf/prepared.py): taken once, bounded."""
from __future__ import annotations

from datetime import date

from agent.emcf.prepared import MAX_KEPT, Prepared, PreparedRequests
from agent.journal import SealJob
from fiscal.canonical import Fragments


def _prepared(expires_at: float) -> Prepared:
    job = SealJob(request={"request_id": "emcf-x"}, fingerprint="f" * 64, lines=[], totals={"total": "1.00"},
                  fragments=Fragments({"items": []}))
    return Prepared.of(job, date(2026, 1, 5), expires_at)


def test_a_prepared_invoice_is_taken_by_one_confirm_with_a_fresh_job():
    kept = PreparedRequests()
    prepared = _prepared(expires_at=200)
    kept.keep("u1", prepared, now=100)
    taken = kept.take("u1")
    assert taken is prepared and kept.take("u1") is None  # a second confirm rebuilds its own
    first, second = taken.job(), taken.job()
    assert first.future is not second.future and first.request is prepared.request
    assert first.fragments is prepared.fragments


def test_expired_and_surplus_prepared_invoices_are_dropped():
    kept = PreparedRequests()
    kept.keep("old", _prepared(expires_at=50), now=0)
    kept.keep("live", _prepared(expires_at=10_000), now=100)  # a minute later: the expired one goes
    assert kept.take("old") is None and len(kept) == 1
    for i in range(MAX_KEPT + 5):
        kept.keep(f"u{i}", _prepared(expires_at=10_000), now=101)
    assert len(kept) <= MAX_KEPT
    assert kept.take(f"u{MAX_KEPT + 4}") is not None  # the newest stay


def test_a_cancelled_request_leaves_nothing_behind():
    kept = PreparedRequests()
    kept.keep("u1", _prepared(expires_at=200), now=100)
    kept.discard("u1")
    assert len(kept) == 0
