"""Disk full while sealing: a clear error, no half-written invoice, sealing resumes with space.

The journal file is capped with SQLite's own `max_page_count`, which makes SQLite fail exactly as
on a full disk (SQLITE_FULL, "database or disk is full") on the real file.
"""
from __future__ import annotations

import pytest

from agent.config import load_config
from agent.errors import StorageFailure
from agent.service import AgentService
from tests.support import invoice


def test_full_journal_refuses_cleanly_and_recovers(harness):
    harness.add_credential(harness.credential(1, 10_000))
    service = AgentService.open(load_config(harness.data_dir))
    try:
        seal = lambda rid: service.journal.submit(service.prepare(invoice(rid, n_items=20))).result(10)
        seal("D-0")
        pages = service.journal._wconn.execute("PRAGMA page_count").fetchone()[0]
        service.journal._wconn.execute(f"PRAGMA max_page_count = {pages + 2}")
        sealed, failure = 1, None
        for i in range(1, 200):
            try:
                seal(f"D-{i}")
                sealed += 1
            except StorageFailure as exc:
                failure = exc
                break
        assert failure is not None and "full" in failure.detail
        # Nothing half-written: the numbers are exactly 1..sealed, the chain and credential agree.
        assert harness.numbers() == list(range(1, sealed + 1))
        service.journal._wconn.execute("PRAGMA max_page_count = 1073741823")
        # The refused request can be retried and gets the next number, not a skipped one.
        out = seal(f"D-{sealed}")
        assert out.invoice["security"]["fiscal_number"] == sealed + 1
    finally:
        service.close()
    res = harness.verify()
    assert res.returncode == 0, res.stderr
