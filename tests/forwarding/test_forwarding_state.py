"""The forwarding state's group commit and reading ahead, on the test's cloud database (SQLite or
PostgreSQL): one failing recording does not fail the others of its group, and a release made
while an outlet works from entries it read ahead is seen by the next recording."""
from __future__ import annotations

from datetime import timedelta

import pytest

from cloud_stub import forwarding
from cloud_stub.service import CloudService
from tests.forwarding.fwd_support import cloud_config, fill_ledger

ELEMENTS = {"codeDEFDGI": "B" * 24, "counters": "1/1 FV", "nim": "EM1", "dateTime": "2026-12-04 10:00:00",
            "qrCode": "RDCDEF01;EM1;" + "B" * 24 + ";A1234567B;20261204100000"}


@pytest.fixture
def service(tmp_path):
    fill_ledger(tmp_path / "cloud", 2, 3)
    service = CloudService(cloud_config(tmp_path / "cloud", audit_interval=0, verify_workers=0))
    now = service.now()
    forwarding.add_queues(service.store, now)
    assert sorted(forwarding.claim(service.store, "me", ["OUT-001", "OUT-002"], now, timedelta(seconds=30), 2)) \
        == ["OUT-001", "OUT-002"]
    yield service
    service.close()


def test_one_failing_recording_does_not_fail_the_others_of_its_group(service):
    store, now = service.store, service.now()
    good = forwarding.next_work(store, "OUT-001")
    bad = forwarding.next_work(store, "OUT-002")
    bad.outlet_id = "NO-SUCH-OUTLET"  # its rows cannot be written (no merchant: NOT NULL)
    results = forwarding.record_together(store, [
        (forwarding.record_normalized_in, (bad, "me", "uid-x", ELEMENTS, now)),
        (forwarding.record_normalized_in, (good, "me", "uid-1", ELEMENTS, now)),
    ])
    assert results[0][0] is False and isinstance(results[0][1], Exception)
    assert results[1] == (True, True)
    assert forwarding.invoice_dgi(store, "OUT-001", good.invoice_id)["state"] == "normalized"
    assert forwarding.outlet_status(store, "OUT-001")["next_seq"] == 2
    assert forwarding.outlet_status(store, "OUT-002")["counts"] == {}  # nothing of the failed one


def test_entries_read_ahead_come_in_ledger_order_and_a_release_is_seen_by_the_next_recording(service):
    store, now = service.store, service.now()
    first = forwarding.next_work(store, "OUT-001")
    assert forwarding.record_quarantine(store, first, "me", "INVOICE_REFUSED", "refused", now)
    ahead = forwarding.next_works(store, "OUT-001", 20)
    assert [w.seq for w in ahead] == [2, 3] and all(w.submission is None for w in ahead)
    # Nothing released: the recording says the queue moved on to the next entry read ahead.
    assert forwarding.record_normalized(store, ahead[0], "me", "uid-2", ELEMENTS, now)
    assert (ahead[0].next_seq, ahead[0].released_waiting) == (3, False)
    # An operator releases entry 1 while entry 3 is being forwarded: its recording says so, so
    # the forwarder reads again and the released entry goes before the queue's next one.
    assert forwarding.release(store, "OUT-001", 1, "operator", now) == [1]
    assert forwarding.record_normalized(store, ahead[1], "me", "uid-3", ELEMENTS, now)
    assert ahead[1].released_waiting is True
    again = forwarding.next_works(store, "OUT-001", 20)
    assert [(w.seq, w.submission["state"]) for w in again] == [(1, "released")]


def test_ts_is_utc_to_the_millisecond_whichever_second_and_offset_came_before():
    # ts keeps the text of the last second it formatted: a moment of the same second in another
    # zone, the next second, or a second seen before must still read as its own UTC time.
    from datetime import datetime, timezone

    kinshasa, new_york = timezone(timedelta(hours=1)), timezone(timedelta(hours=-5))
    at = datetime(2026, 12, 4, 23, 59, 59, 999_999, tzinfo=timezone.utc)
    assert forwarding.ts(at) == "2026-12-04T23:59:59.999Z"
    assert forwarding.ts(at.replace(microsecond=1_000)) == "2026-12-04T23:59:59.001Z"
    assert forwarding.ts(at.astimezone(kinshasa)) == "2026-12-04T23:59:59.999Z"
    assert forwarding.ts(datetime(2026, 12, 4, 23, 59, 59, 500, tzinfo=kinshasa)) == "2026-12-04T22:59:59.000Z"
    assert forwarding.ts(at + timedelta(microseconds=1)) == "2026-12-05T00:00:00.000Z"
    assert forwarding.ts(datetime(2026, 12, 4, 19, 0, 0, 42_000, tzinfo=new_york)) == "2026-12-05T00:00:00.042Z"
    assert forwarding.ts(at) == "2026-12-04T23:59:59.999Z"
