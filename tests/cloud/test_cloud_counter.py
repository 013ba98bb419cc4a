"""The per-outlet counter: credential blocks and online numbers never overlap; revocation."""
from __future__ import annotations

import asyncio
import threading

from fiscal.credential import BlockClosure
from cloud_stub.config import CloudConfig
from cloud_stub.service import CloudService

from cloud_helpers import invoice_request, new_key


async def test_credentials_get_consecutive_blocks(cloud):
    await cloud.outlet()
    agent = await cloud.enroll()
    first = await cloud.credential(agent)
    second = await cloud.credential(agent, block_size=20)
    third = await cloud.credential(agent)
    assert (first.block_start, first.block_end) == (1, 500)
    assert (second.block_start, second.block_end) == (501, 520)
    assert (third.block_start, third.block_end) == (521, 1020)
    issuer = await cloud.get("/v1/issuer")
    for cred in (first, second, third):
        assert cred.verify(issuer["public_key"])
        assert cred.outlet_id == "KIN-01" and cred.merchant_nif == "A1234567B"
        assert (cred.not_after - cred.not_before).total_seconds() == 12 * 3600 + 300


async def test_block_size_bounds(cloud):
    await cloud.outlet()
    agent = await cloud.enroll()
    for bad in (0, -1, 10_001, "500", 1.5):
        await cloud.post("/v1/credentials", {"block_size": bad}, agent.headers, 422)
    cred = await cloud.credential(agent, block_size=1)
    assert cred.block_start == cred.block_end == 1


async def test_credential_request_is_idempotent(cloud):
    await cloud.outlet()
    agent = await cloud.enroll()
    first = await cloud.credential(agent, request_id="renew-1")
    again = await cloud.credential(agent, expect=200, request_id="renew-1")
    assert again == first
    nxt = await cloud.credential(agent, request_id="renew-2")
    assert nxt.block_start == first.block_end + 1


async def test_interleaved_seals_and_credentials_never_overlap(cloud):
    await cloud.outlet()
    agent = await cloud.enroll()
    numbers: list[int] = []
    blocks: list[range] = []
    for i in range(3):
        sealed = await cloud.post("/v1/seal", {"invoice": invoice_request().model_dump(mode="json")},
                                  agent.headers, 201)
        numbers.append(sealed["security"]["fiscal_number"])
        cred = await cloud.credential(agent, block_size=5)
        blocks.append(range(cred.block_start, cred.block_end + 1))
    used = numbers + [n for b in blocks for n in b]
    assert sorted(used) == list(range(1, len(used) + 1))  # no overlap, no hole
    assert numbers == [1, 7, 13]


async def test_concurrent_seals_and_credentials_never_overlap(cloud):
    await cloud.outlet()
    agent = await cloud.enroll()

    async def seal():
        data = await cloud.post("/v1/seal", {"invoice": invoice_request().model_dump(mode="json")},
                                agent.headers, 201)
        return [data["security"]["fiscal_number"]]

    async def credential():
        cred = await cloud.credential(agent, block_size=7)
        return list(range(cred.block_start, cred.block_end + 1))

    results = await asyncio.gather(*[seal() if i % 3 else credential() for i in range(30)])
    used = [n for r in results for n in r]
    assert sorted(used) == list(range(1, len(used) + 1))
    # The cloud chain is one line in number order, whatever the arrival order.
    entries = await cloud.ledger("KIN-01")
    assert [e["fiscal_number"] for e in entries] == sorted(e["fiscal_number"] for e in entries)
    assert (await cloud.get("/v1/outlets/KIN-01/ledger/verify", cloud.admin))["valid"]


def test_two_processes_share_one_counter(tmp_path, clock):
    """Two service instances on one database file (as two server processes would)."""
    config = CloudConfig(data_dir=tmp_path / "cloud", audit_interval=0, clock=clock)
    a, b = CloudService(config), CloudService(config)
    try:
        a.add_merchant("A1", "M")
        a.add_outlet("KIN-01", "A1", "O")
        token = a.create_token("KIN-01")["token"]
        _, public = new_key()
        enrolled = a.enroll(token, public, "box")
        agent = a.authenticate(enrolled["agent_token"])
        got: list[tuple[int, int]] = []
        lock = threading.Lock()

        def worker(service):
            for _ in range(15):
                doc, _ = service.issue_credential(agent, block_size=3)
                with lock:
                    got.append((doc["block_start"], doc["block_end"]))

        threads = [threading.Thread(target=worker, args=(s,)) for s in (a, b, a, b)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        spans = sorted(got)
        assert len(spans) == 60
        assert all(nxt[0] == prev[1] + 1 for prev, nxt in zip(spans, spans[1:]))
    finally:
        a.close()
        b.close()


async def test_revocation_is_visible(cloud):
    await cloud.outlet()
    agent = await cloud.enroll()
    cred = await cloud.credential(agent)
    status = await cloud.get(f"/v1/credentials/{cred.id}", agent.headers)
    assert status["status"] == "active" and status["revoked_at"] is None
    assert status["credential"]["id"] == cred.id
    revoked = await cloud.post(f"/v1/admin/credentials/{cred.id}/revoke", {"reason": "box stolen"},
                               cloud.admin, 200)
    assert revoked["status"] == "revoked"
    status = await cloud.get(f"/v1/credentials/{cred.id}", agent.headers)
    assert status["status"] == "revoked" and status["revoke_reason"] == "box stolen"
    assert status["revoked_at"] is not None
    future = (cloud.clock.now.replace(year=cloud.clock.now.year + 1)).isoformat()
    await cloud.post(f"/v1/admin/credentials/{cred.id}/revoke", {"effective_at": future}, cloud.admin, 422)
    await cloud.post("/v1/admin/credentials/DC-NONE/revoke", {}, cloud.admin, 404)


async def test_closure_cannot_void_reconciled_numbers(cloud):
    await cloud.outlet()
    agent = await cloud.enroll()
    cred = await cloud.credential(agent, block_size=10)
    await cloud.reconcile(agent, [agent.seal(cred, n) for n in (1, 2, 3)])
    closure = BlockClosure.make(agent.key, cred.id, 2)
    data = await cloud.post("/v1/credentials", {"closure": closure.model_dump(mode="json")}, agent.headers, 409)
    assert data["type"].endswith("/closure_conflict")
    # Nothing was reserved by the refused request.
    nxt = await cloud.credential(agent, closure=BlockClosure.make(agent.key, cred.id, 3))
    assert nxt.block_start == 11
