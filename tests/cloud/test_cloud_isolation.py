"""Tenant isolation: an agent of outlet X can neither read nor write outlet Y."""
from __future__ import annotations

import pytest

from fiscal.credential import BlockClosure


@pytest.fixture
async def two(cloud):
    await cloud.outlet("KIN-01", nif="A1234567B")
    await cloud.outlet("LUB-01", nif="B7654321C", time_zone="Africa/Lubumbashi")
    x = await cloud.enroll("KIN-01")
    y = await cloud.enroll("LUB-01")
    cred_y = await cloud.credential(y)
    await cloud.reconcile(y, [y.seal(cred_y, cred_y.block_start)])
    return cloud, x, y, cred_y


async def test_cannot_get_credentials_of_another_outlet(two):
    cloud, x, y, cred_y = two
    missing = await cloud.get(f"/v1/credentials/{cred_y.id}", x.headers, expect=404)
    nonexistent = await cloud.get("/v1/credentials/DC-DOESNOTEXIST", x.headers, expect=404)
    assert missing["type"] == nonexistent["type"]  # the same answer: nothing leaks
    # Closing Y's credential with X's key is "not found" too, and reserves nothing.
    closure = BlockClosure.make(x.key, cred_y.id, cred_y.block_start)
    await cloud.post("/v1/credentials", {"closure": closure.model_dump(mode="json")}, x.headers, 404)
    # A credential X asks for is always for X's outlet.
    cred_x = await cloud.credential(x)
    assert cred_x.outlet_id == "KIN-01" and cred_x.block_start == 1
    assert (await cloud.get(f"/v1/credentials/{cred_y.id}", y.headers))["status"] == "active"


async def test_cannot_read_ledger_of_another_outlet(two):
    cloud, x, y, _ = two
    for path in ("/v1/outlets/LUB-01/ledger", "/v1/outlets/LUB-01/ledger/verify",
                 "/v1/outlets/LUB-01", "/v1/outlets/LUB-01/rejections", "/v1/outlets/LUB-01/devices"):
        data = await cloud.get(path, x.headers, expect=404)
        assert data["type"].endswith("/outlet_not_found")
        assert "entries" not in data
    assert len((await cloud.get("/v1/outlets/LUB-01/ledger", y.headers))["entries"]) == 1


async def test_cannot_read_summary_of_another_outlet(two):
    cloud, x, y, _ = two
    await cloud.get("/v1/outlets/LUB-01/summary", x.headers, expect=404)
    assert (await cloud.get("/v1/outlets/LUB-01/summary", y.headers))["count"] == 1


async def test_cannot_read_flags_of_another_outlet(two):
    cloud, x, y, cred_y = two
    await cloud.reconcile(y, [y.seal(cred_y, cred_y.block_start + 2)])  # a gap at Y
    assert len(await cloud.flags("LUB-01")) == 1
    await cloud.get("/v1/outlets/LUB-01/flags", x.headers, expect=404)
    assert (await cloud.get("/v1/outlets/KIN-01/flags", x.headers))["flags"] == []


async def test_cannot_reconcile_invoices_of_another_outlet(two):
    cloud, x, y, cred_y = two
    before = await cloud.ledger("LUB-01")
    theirs = y.seal(cred_y, cred_y.block_start + 1)
    answer = await cloud.reconcile(x, [theirs])
    assert [(r["status"], r["reason"]) for r in answer["results"]] == [("rejected", "wrong_outlet")]
    assert await cloud.ledger("LUB-01") == before
    assert await cloud.ledger("KIN-01") == []
    # Y can still upload it: X's attempt left no trace on Y's chain.
    answer = await cloud.reconcile(y, [theirs])
    assert answer["results"][0]["status"] == "accepted"


async def test_cannot_provision_a_device_for_another_outlet(two):
    cloud, x, y, _ = two
    # Agents bind no device at all (the operator does), for another outlet or their own.
    data = await cloud.post("/v1/devices", {"mid": "AB01", "nif": "B7654321C", "outlet_id": "LUB-01"},
                            x.headers, 403)
    assert data["type"].endswith("/operator_only")
    await cloud.post("/v1/devices", {"mid": "AB01", "nif": "B7654321C"}, y.headers, 403)
    assert (await cloud.get("/v1/outlets/LUB-01/devices", cloud.admin))["devices"] == []
    # Bound to Y by the operator, the MID neither blocks X's binding nor shows in X's outlet.
    await cloud.post("/v1/admin/outlets/LUB-01/devices", {"mid": "AB01", "nif": "B7654321C"}, cloud.admin, 201)
    await cloud.post("/v1/admin/outlets/KIN-01/devices", {"mid": "AB01", "nif": "A1234567B"}, cloud.admin, 201)
    assert [d["outlet_id"] for d in (await cloud.get("/v1/outlets/KIN-01/devices", x.headers))["devices"]] \
        == ["KIN-01"]
    await cloud.get("/v1/outlets/LUB-01/devices", x.headers, 404)
