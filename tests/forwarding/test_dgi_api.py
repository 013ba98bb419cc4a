"""The cloud's DGI forwarding endpoints: who may read and release, and bad input (4xx, nothing changed)."""
from __future__ import annotations

from datetime import timedelta

import pytest
from aiohttp.test_utils import TestClient, TestServer

from cloud_stub import forwarding
from cloud_stub.app import init_app
from cloud_stub.service import CloudService
from tests.forwarding.fwd_support import cloud_config, fill_ledger


@pytest.fixture
async def cloud(tmp_path):
    ledger = fill_ledger(tmp_path / "cloud", 2, 3)
    config = cloud_config(tmp_path / "cloud", audit_interval=0, verify_workers=0)
    service = CloudService(config)
    # The first entry of OUT-001 refused by the DGI, as the forwarder records it.
    now = service.now()
    forwarding.add_queues(service.store, now)
    assert forwarding.claim(service.store, "test", ["OUT-001"], now, timedelta(seconds=30), 1) == ["OUT-001"]
    work = forwarding.next_work(service.store, "OUT-001")
    forwarding.record_quarantine(service.store, work, "test", "INVOICE_REFUSED", "refused", now)
    forwarding.drop(service.store, "OUT-001", "test", now)
    agent = service.enroll(service.create_token("OUT-002")["token"], _public_key(), "box")
    client = TestClient(TestServer(init_app(config, service), host="127.0.0.1"))
    await client.start_server()
    yield client, {"Authorization": f"Bearer {service.admin_token}"}, \
        {"Authorization": f"Bearer {agent['agent_token']}"}, ledger
    await client.close()
    service.close()


def _public_key() -> str:
    from fiscal.signing import generate_private_key, public_key_text
    return public_key_text(generate_private_key())


async def _get(client, path, headers):
    resp = await client.get(path, headers=headers)
    return resp.status, await resp.json(content_type=None)


async def test_status_release_and_who_may(cloud):
    client, admin, agent, ledger = cloud
    status, body = await _get(client, "/v1/outlets/OUT-001/dgi", admin)
    assert status == 200 and [q["seq"] for q in body["quarantined"]] == [1]
    assert body["next_seq"] == 2 and body["waiting"] == 2
    first = ledger["OUT-001"][0]
    status, inv = await _get(client, f"/v1/outlets/OUT-001/invoices/{first}/dgi", admin)
    assert inv["state"] == "quarantined" and inv["error_code"] == "INVOICE_REFUSED"
    status, inv = await _get(client, f"/v1/outlets/OUT-001/invoices/{ledger['OUT-001'][1]}/dgi", admin)
    assert status == 200 and inv["state"] == "queued"
    # Another outlet's agent sees neither the status nor the invoices, and cannot release.
    assert (await _get(client, "/v1/outlets/OUT-001/dgi", agent))[0] == 404
    assert (await _get(client, f"/v1/outlets/OUT-001/invoices/{first}/dgi", agent))[0] == 404
    assert (await _get(client, "/v1/outlets/OUT-002/dgi", agent))[0] == 200
    resp = await client.post("/v1/admin/outlets/OUT-001/dgi/release?seq=1", headers=agent)
    assert resp.status == 403
    # Bad input: a clear 4xx problem, nothing released.
    for query, code in (("?seq=abc", 422), ("?seq=0", 422), ("?seq=2", 404)):
        resp = await client.post(f"/v1/admin/outlets/OUT-001/dgi/release{query}", headers=admin)
        assert resp.status == code and resp.content_type == "application/problem+json"
    assert (await client.post("/v1/admin/outlets/NOPE/dgi/release", headers=admin)).status == 404
    assert (await _get(client, "/v1/outlets/OUT-001/dgi?limit=0", admin))[0] == 422
    assert (await _get(client, "/v1/outlets/OUT-001/invoices/NO-SUCH/dgi", admin))[0] == 404
    assert len((await _get(client, "/v1/outlets/OUT-001/dgi", admin))[1]["quarantined"]) == 1
    resp = await client.post("/v1/admin/outlets/OUT-001/dgi/release?seq=1", headers=admin)
    assert resp.status == 200 and (await resp.json())["released"] == [1]
    status, inv = await _get(client, f"/v1/outlets/OUT-001/invoices/{first}/dgi", admin)
    assert inv["state"] == "released"
    assert (await _get(client, "/v1/outlets/OUT-001/dgi", admin))[1]["quarantined"] == []
