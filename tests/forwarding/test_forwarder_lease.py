"""Leases: an instance that lost its outlet mid-entry records what the DGI answered but does not
move the queue; the instance that took over passes the settled entry without calling the DGI."""
from __future__ import annotations

from datetime import timedelta

import aiohttp

from cloud_stub import forwarding
from cloud_stub.forwarder import DgiClient, Forwarder
from cloud_stub.service import CloudService
from tests.forwarding.fwd_support import cloud_config, fill_ledger
from tests.support import free_port

ELEMENTS = {"codeDEFDGI": "A" * 24, "counters": "1/1 FV", "nim": "EM1", "dateTime": "2026-12-04 10:00:00",
            "qrCode": "RDCDEF01;EM1;" + "A" * 24 + ";A1234567B;20261204100000"}


async def test_a_settled_entry_left_by_a_lost_lease_is_passed_not_sent_again(tmp_path):
    fill_ledger(tmp_path / "cloud", 1, 2)
    config = cloud_config(tmp_path / "cloud", audit_interval=0, verify_workers=0,
                         dgi_url=f"http://127.0.0.1:{free_port()}")  # nothing listens: any call fails
    service = CloudService(config)
    try:
        store, now = service.store, service.now()
        forwarding.add_queues(store, now)
        # Instance A's lease is already over when its confirm's answer comes back ...
        assert forwarding.claim(store, "A", ["OUT-001"], now, timedelta(seconds=-1), 1) == ["OUT-001"]
        work = forwarding.next_work(store, "OUT-001")
        assert forwarding.claim(store, "B", ["OUT-001"], now, timedelta(seconds=30), 1) == ["OUT-001"]
        assert forwarding.record_normalized(store, work, "A", "uid-1", ELEMENTS, now) is False
        assert forwarding.outlet_status(store, "OUT-001")["next_seq"] == 1  # the queue did not move
        # ... so B finds entry 1 at the head of the queue, already normalized.
        again = forwarding.next_work(store, "OUT-001")
        assert again.seq == 1 and again.submission["state"] == "normalized"
        forwarder = Forwarder(service, config)
        forwarder.owner = "B"
        async with aiohttp.ClientSession() as session:
            client = DgiClient(session, config.dgi_url, "token", 0, 2)
            assert await forwarder._forward(again, client) is True  # no call made: it would have failed
        status = forwarding.outlet_status(store, "OUT-001")
        assert status["next_seq"] == 2 and status["counts"] == {"normalized": 1}
        with store.read() as tx:
            assert tx.dgi_answer("OUT-001", 1)["code"] == "A" * 24
    finally:
        service.close()
