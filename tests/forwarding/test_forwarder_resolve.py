"""A confirm whose fate the DGI cannot tell is quarantined for a person, never sent again blindly;
one the DGI confirmed is recorded from its answer. Real simulator over HTTP, real cloud database."""
from __future__ import annotations

from datetime import timedelta

import aiohttp
import pytest

from cloud_stub import forwarding
from cloud_stub.forwarder import DgiClient, Forwarder
from cloud_stub.service import CloudService
from simulator.emcf.store import Store
from simulator.emcf.tokens import issue
from tests.forwarding.fwd_support import EmcfTestServer, cloud_config, fill_ledger


@pytest.fixture
async def world(tmp_path):
    fill_ledger(tmp_path / "cloud", 1, 1)
    store = Store(tmp_path / "emcf.sqlite3")
    server = EmcfTestServer(store, host="127.0.0.1")
    await server.start_server()
    services = []

    async def make(lookup: bool):
        config = cloud_config(tmp_path / "cloud", audit_interval=0, verify_workers=0,
                             dgi_url=str(server.make_url("/")), dgi_lookup=lookup)
        service = CloudService(config)
        services.append(service)
        now = service.now()
        forwarding.add_queues(service.store, now)
        forwarding.claim(service.store, "me", ["OUT-001"], now, timedelta(seconds=30), 1)
        forwarder = Forwarder(service, config)
        forwarder.owner = "me"
        return service, forwarder

    async with aiohttp.ClientSession() as session:
        client = DgiClient(session, str(server.make_url("/")), issue(store.secret, "A1234567B", "ISF-001", 600), 0, 10)
        yield make, client, store
    for service in services:
        service.close()
    await server.close()
    store.close()


def _submitted(service, uid: str):
    work = forwarding.next_work(service.store, "OUT-001")
    assert forwarding.record_submitted(service.store, work, "me", uid, "232.00", "32.00", service.now())
    return forwarding.next_work(service.store, "OUT-001")


@pytest.mark.parametrize("lookup", [True, False])
async def test_an_unknown_uid_is_quarantined_as_uncertain(world, lookup):
    make, client, store = world
    service, forwarder = await make(lookup)
    work = _submitted(service, "no-such-uid")
    assert await forwarder._forward(work, client) is True
    status = forwarding.outlet_status(service.store, "OUT-001")
    assert [q["error_code"] for q in status["quarantined"]] == ["DGI_UNCERTAIN"]
    assert store.stats()["requests"] == {}  # nothing was submitted again


async def test_a_confirm_the_dgi_did_is_recorded_from_the_lookup(world):
    make, client, store = world
    service, forwarder = await make(True)
    work = forwarding.next_work(service.store, "OUT-001")
    from cloud_stub.dgi_body import emcf_request
    first = await client.call("POST", "/api/invoice", emcf_request(work.invoice))
    work = _submitted(service, first["uid"])
    done = await client.call("PUT", f"/api/invoice/{first['uid']}/confirm",
                             {"total": first["total"], "vtotal": first["vtotal"]})  # its answer "lost"
    assert await forwarder._forward(work, client) is True
    answer = forwarding.invoice_dgi(service.store, "OUT-001", work.invoice_id)
    assert answer["state"] == "normalized" and answer["code"] == done["codeDEFDGI"]
    assert store.stats()["normalized"] == 1 and store.stats()["requests"] == {"confirmed": 1}
