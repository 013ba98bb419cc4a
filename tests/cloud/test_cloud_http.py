"""Bad input over HTTP: always an RFC 9457 problem with a 4xx, never a traceback or a 500."""
from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from aiohttp.test_utils import TestClient, TestServer

from cloud_stub.app import SERVICE, init_app
from cloud_stub.config import CloudConfig

from cloud_helpers import Harness


def assert_problem(resp, data, status: int) -> None:
    assert resp.status == status, data
    assert resp.headers["Content-Type"].startswith("application/problem+json")
    assert set(data) >= {"type", "title", "status", "detail"} and data["status"] == status
    assert "Traceback" not in str(data)


async def test_health_and_issuer_are_public(cloud):
    assert (await cloud.get("/v1/health"))["status"] == "ok"
    issuer = await cloud.get("/v1/issuer")
    assert issuer["algorithm"] == "Ed25519" and len(issuer["key_id"]) == 16
    assert "PRIVATE" not in str(issuer)


@pytest.mark.parametrize("body, status, kind", [
    (b"{not json", 400, "malformed_json"),
    (b"\xff\xfe{}", 400, "malformed_json"),
    (b"[1, 2]", 400, "malformed_json"),
    (b'{"token": "\\ud800", "agent_public_key": "x"}', 400, "malformed_json"),
    (b'{"token": 5, "agent_public_key": "x"}', 422, "validation"),
    (b'{"token": "t", "agent_public_key": "x", "extra": 1}', 422, "validation"),
])
async def test_bad_bodies(cloud, body, status, kind):
    resp = await cloud.client.post("/v1/enroll", data=body, headers={"Content-Type": "application/json"})
    data = await resp.json(content_type=None)
    assert_problem(resp, data, status)
    assert data["type"].endswith("/" + kind)


async def test_validation_errors_name_the_field(cloud):
    await cloud.outlet()
    agent = await cloud.enroll()
    resp = await cloud.client.post("/v1/seal", json={"invoice": {"request_id": "r", "type": "XX"}},
                                   headers=agent.headers)
    data = await resp.json(content_type=None)
    assert_problem(resp, data, 422)
    fields = {e["field"] for e in data["errors"]}
    assert "invoice.type" in fields and "invoice.items" in fields


async def test_unknown_route_and_method(cloud):
    resp = await cloud.client.get("/v1/nothing-here")
    assert_problem(resp, await resp.json(content_type=None), 404)
    resp = await cloud.client.delete("/v1/health")
    assert_problem(resp, await resp.json(content_type=None), 405)


async def test_batch_limit(cloud):
    await cloud.outlet()
    agent = await cloud.enroll()
    cloud.service.config.max_batch = 2
    data = await cloud.post("/v1/reconcile", {"invoices": [{}, {}, {}]}, agent.headers, 422)
    assert data["type"].endswith("/batch_too_large")
    await cloud.post("/v1/reconcile", {"invoices": []}, agent.headers, 422)


async def test_body_size_limit(tmp_path, clock):
    config = CloudConfig(data_dir=tmp_path / "c", audit_interval=0, max_body=64 * 1024, clock=clock)
    async with TestClient(TestServer(init_app(config), host="127.0.0.1")) as client:
        big = b'{"token": "' + b"x" * (128 * 1024) + b'", "agent_public_key": "k"}'
        resp = await client.post("/v1/enroll", data=big, headers={"Content-Type": "application/json"})
        data = await resp.json(content_type=None)
        assert_problem(resp, data, 413)
        assert (await (await client.get("/v1/health")).json())["status"] == "ok"


async def test_periodic_audit_flags_expired_blocks(tmp_path, clock):
    """The server's own sweep flags an expired block even if no agent ever calls again."""
    config = CloudConfig(data_dir=tmp_path / "c", audit_interval=0.05, gap_grace=timedelta(0), clock=clock)
    async with TestClient(TestServer(init_app(config), host="127.0.0.1")) as client:
        cloud = Harness(client, client.app[SERVICE], clock)
        await cloud.outlet()
        agent = await cloud.enroll()
        await cloud.credential(agent, block_size=3)
        clock.advance(hours=13)
        for _ in range(100):
            if await cloud.flags("KIN-01"):
                break
            await asyncio.sleep(0.05)
        assert [f["numbers"] for f in await cloud.flags("KIN-01")] == [[[1, 3]]]
