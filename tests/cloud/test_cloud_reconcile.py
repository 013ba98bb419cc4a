"""Reconciliation of delegated, device and cloud invoices; duplicates, conflicts, gaps."""
from __future__ import annotations

import copy
import json
from datetime import timedelta

import pytest

from fiscal.protocol import GENESIS_HASH
from fiscal.credential import BlockClosure
from fiscal.seal import apply_signature, chain_hash
from cloud_stub.config import CloudConfig

from cloud_helpers import invoice_request, new_key, unsigned_invoice


@pytest.fixture(params=["in-process", "workers"])
def config(request, tmp_path, clock) -> CloudConfig:
    """Every test twice: checks in the service's process, then by two verifier workers (every
    batch, however small, cut into chunks: `parallel_min_batch=1`)."""
    workers = 0 if request.param == "in-process" else 2
    return CloudConfig(data_dir=tmp_path / "cloud", audit_interval=0, gap_grace=timedelta(0), clock=clock,
                       verify_workers=workers, parallel_min_batch=1)


def statuses(answer: dict) -> list[tuple[str, str | None]]:
    return [(r["status"], r.get("reason")) for r in answer["results"]]


async def test_chained_invoices_are_accepted(cloud):
    await cloud.outlet()
    agent = await cloud.enroll()
    cred = await cloud.credential(agent)
    batch = [agent.seal(cred, n) for n in range(cred.block_start, cred.block_start + 3)]
    answer = await cloud.reconcile(agent, batch)
    assert statuses(answer) == [("accepted", None)] * 3
    entries = await cloud.ledger("KIN-01")
    assert [e["fiscal_number"] for e in entries] == [1, 2, 3]
    # Stored exactly as sealed.
    assert [e["invoice"] for e in entries] == batch
    assert await cloud.flags("KIN-01") == []


async def test_same_batch_twice_is_duplicate_and_ledger_unchanged(cloud):
    await cloud.outlet()
    agent = await cloud.enroll()
    cred = await cloud.credential(agent)
    batch = [agent.seal(cred, n) for n in (1, 2)]
    await cloud.reconcile(agent, batch)
    before = await cloud.ledger("KIN-01")
    # The agent's local sync state is not part of the sealed content.
    again = [dict(inv, sync={"state": "pending"}) for inv in batch]
    answer = await cloud.reconcile(agent, again)
    assert statuses(answer) == [("duplicate", None)] * 2
    assert await cloud.ledger("KIN-01") == before


async def test_partially_accepted_batch_resumes(cloud):
    await cloud.outlet()
    agent = await cloud.enroll()
    cred = await cloud.credential(agent)
    batch = [agent.seal(cred, n) for n in (1, 2, 3)]
    await cloud.reconcile(agent, batch[:2])
    answer = await cloud.reconcile(agent, batch)
    assert statuses(answer) == [("duplicate", None), ("duplicate", None), ("accepted", None)]


async def test_same_number_different_content_is_conflict(cloud):
    await cloud.outlet()
    agent = await cloud.enroll()
    cred = await cloud.credential(agent)
    first = agent.seal(cred, 1)
    await cloud.reconcile(agent, [first])
    other = agent.seal(cred, 1, prev_hash=GENESIS_HASH, request=invoice_request("2320.00"))
    answer = await cloud.reconcile(agent, [other])
    assert statuses(answer) == [("rejected", "conflict")]
    assert len(await cloud.ledger("KIN-01")) == 1


async def test_forged_signature_rejected(cloud):
    await cloud.outlet()
    agent = await cloud.enroll()
    cred = await cloud.credential(agent)
    forger, _ = new_key()
    forged = agent.seal(cred, 1, key=forger, advance_chain=False)
    tampered = agent.seal(cred, 1, advance_chain=False)
    tampered["totals"]["total"] = "1.00"  # content changed after sealing, hash recomputed
    tampered["chain"]["hash"] = chain_hash(tampered)
    answer = await cloud.reconcile(agent, [forged, tampered])
    assert statuses(answer) == [("rejected", "bad_signature")] * 2
    assert await cloud.ledger("KIN-01") == []


async def test_edited_content_without_new_hash_is_hash_mismatch(cloud):
    await cloud.outlet()
    agent = await cloud.enroll()
    cred = await cloud.credential(agent)
    invoice = agent.seal(cred, 1)
    invoice["invoice_number"] = "FAC-EDITED"
    answer = await cloud.reconcile(agent, [invoice])
    assert statuses(answer) == [("rejected", "hash_mismatch")]


async def test_number_outside_block_rejected(cloud):
    await cloud.outlet()
    agent = await cloud.enroll()
    cred = await cloud.credential(agent, block_size=5)
    answer = await cloud.reconcile(agent, [agent.seal(cred, 6)])
    assert statuses(answer) == [("rejected", "outside_block")]


async def test_timestamp_outside_window_rejected(cloud):
    await cloud.outlet()
    agent = await cloud.enroll()
    cred = await cloud.credential(agent)
    late = agent.seal(cred, 1, when=cred.not_after + timedelta(seconds=1), advance_chain=False)
    early = agent.seal(cred, 1, when=cred.not_before - timedelta(seconds=1), advance_chain=False)
    answer = await cloud.reconcile(agent, [late, early])
    assert statuses(answer) == [("rejected", "outside_window")] * 2


async def test_revoked_credential_rejected_after_revocation_time_only(cloud):
    await cloud.outlet()
    agent = await cloud.enroll()
    cred = await cloud.credential(agent)
    before = agent.seal(cred, 1, when=cloud.clock.now)
    after = agent.seal(cred, 2, when=cloud.clock.now + timedelta(minutes=10))
    cloud.clock.advance(minutes=5)
    await cloud.post(f"/v1/admin/credentials/{cred.id}/revoke", {"reason": "box stolen"}, cloud.admin, 200)
    answer = await cloud.reconcile(agent, [before, after])
    assert statuses(answer) == [("accepted", None), ("rejected", "credential_revoked")]


async def test_credential_of_another_outlet_rejected(cloud):
    await cloud.outlet("KIN-01")
    await cloud.outlet("KIN-02")
    x = await cloud.enroll("KIN-01")
    y = await cloud.enroll("KIN-02")
    cred_y = await cloud.credential(y)
    # X signs with its own key but names Y's credential: the credential is not X's.
    stolen = x.seal(cred_y, cred_y.block_start)
    answer = await cloud.reconcile(x, [stolen])
    assert statuses(answer) == [("rejected", "foreign_credential")]


async def test_unknown_credential_rejected(cloud):
    await cloud.outlet()
    agent = await cloud.enroll()
    cred = await cloud.credential(agent)
    fake = cred.model_copy(update={"id": "DC-NOTISSUED"})
    answer = await cloud.reconcile(agent, [agent.seal(fake, 1)])
    assert statuses(answer) == [("rejected", "unknown_credential")]


async def test_broken_chain_rejected(cloud):
    await cloud.outlet()
    agent = await cloud.enroll()
    cred = await cloud.credential(agent)
    first = agent.seal(cred, 1)
    second = agent.seal(cred, 2, prev_hash="ab" * 32)
    answer = await cloud.reconcile(agent, [first, second])
    assert statuses(answer) == [("accepted", None), ("rejected", "chain_break")]


async def test_out_of_order_batch_rejected_then_accepted_in_order(cloud):
    await cloud.outlet()
    agent = await cloud.enroll()
    cred = await cloud.credential(agent)
    one, two, three = (agent.seal(cred, n) for n in (1, 2, 3))
    answer = await cloud.reconcile(agent, [one, three, two])
    assert statuses(answer) == [("accepted", None), ("rejected", "chain_break"), ("accepted", None)]
    # Gap detection runs after the whole batch: number 2 arrived in it, so nothing is flagged.
    assert await cloud.flags("KIN-01") == []
    answer = await cloud.reconcile(agent, [three])
    assert statuses(answer) == [("accepted", None)]
    rejections = (await cloud.get("/v1/outlets/KIN-01/rejections", agent.headers))["rejections"]
    assert [(r["fiscal_number"], r["reason"]) for r in rejections] == [(3, "chain_break")]


async def test_skipped_number_flags_the_outlet(cloud):
    await cloud.outlet()
    agent = await cloud.enroll()
    cred = await cloud.credential(agent)
    # The agent's own chain skips number 3: every link verifies, the number is missing.
    batch = [agent.seal(cred, n) for n in (1, 2, 4)]
    answer = await cloud.reconcile(agent, batch)
    assert statuses(answer) == [("accepted", None)] * 3
    flags = await cloud.flags("KIN-01")
    assert [(f["reason"], f["credential_id"], f["numbers"], f["resolved_at"]) for f in flags] == [
        ("gap", cred.id, [[3, 3]], None)]
    # Agents see their own outlet's flags.
    mine = (await cloud.get("/v1/outlets/KIN-01/flags", agent.headers))["flags"]
    assert [f["id"] for f in mine] == [flags[0]["id"]]


async def test_lost_invoice_flags_gap_when_later_one_arrives(cloud):
    await cloud.outlet()
    agent = await cloud.enroll()
    cred = await cloud.credential(agent)
    one, two, three = (agent.seal(cred, n) for n in (1, 2, 3))
    answer = await cloud.reconcile(agent, [one, three])
    assert statuses(answer) == [("accepted", None), ("rejected", "chain_break")]
    flags = await cloud.flags("KIN-01")
    assert [(f["numbers"], f["resolved_at"]) for f in flags] == [([[2, 2]], None)]
    # The missing invoice turns up: the flag is resolved (kept, not deleted).
    await cloud.reconcile(agent, [two, three])
    flags = await cloud.flags("KIN-01")
    assert len(flags) == 1 and flags[0]["resolved_at"] is not None


async def test_block_closure_voids_the_tail_without_flag(cloud):
    await cloud.outlet()
    agent = await cloud.enroll()
    cred = await cloud.credential(agent, block_size=10)
    await cloud.reconcile(agent, [agent.seal(cred, n) for n in (1, 2, 3)])
    closure = BlockClosure.make(agent.key, cred.id, 3)
    nxt = await cloud.credential(agent, closure=closure, block_size=10)
    assert nxt.block_start == 11
    status = await cloud.get(f"/v1/credentials/{cred.id}", agent.headers)
    assert status["status"] == "closed" and status["closed_last_used"] == 3
    # The chain spans credentials: the next invoice links to number 3.
    answer = await cloud.reconcile(agent, [agent.seal(nxt, 11)])
    assert statuses(answer) == [("accepted", None)]
    cloud.clock.advance(hours=13)  # both credentials expired and settled
    await cloud.post("/v1/admin/audit", {}, cloud.admin, 200)
    assert [f["numbers"] for f in await cloud.flags("KIN-01")] == [[[12, 20]]]  # nxt's unclosed tail
    # A number after the closure is void: refused.
    late = agent.seal(cred, 4, prev_hash=GENESIS_HASH, advance_chain=False)
    answer = await cloud.reconcile(agent, [late])
    assert statuses(answer) == [("rejected", "voided_number")]


async def test_closure_with_unreconciled_numbers_flags_gap(cloud):
    await cloud.outlet()
    agent = await cloud.enroll()
    cred = await cloud.credential(agent, block_size=10)
    invoices = [agent.seal(cred, n) for n in range(1, 6)]
    await cloud.reconcile(agent, invoices[:3])
    await cloud.credential(agent, closure=BlockClosure.make(agent.key, cred.id, 5))
    flags = await cloud.flags("KIN-01")
    assert [(f["credential_id"], f["numbers"]) for f in flags] == [(cred.id, [[4, 5]])]


async def test_closure_respects_grace_period(cloud):
    cloud.service.config.gap_grace = timedelta(hours=1)
    await cloud.outlet()
    agent = await cloud.enroll()
    cred = await cloud.credential(agent, block_size=10)
    invoices = [agent.seal(cred, n) for n in range(1, 4)]
    await cloud.credential(agent, closure=BlockClosure.make(agent.key, cred.id, 3))
    assert await cloud.flags("KIN-01") == []  # the agent uploads after renewing
    await cloud.reconcile(agent, invoices)
    cloud.clock.advance(hours=2)
    await cloud.post("/v1/admin/audit", {}, cloud.admin, 200)
    assert [f for f in await cloud.flags("KIN-01") if f["credential_id"] == cred.id] == []


async def test_closure_signed_by_another_key_refused(cloud):
    await cloud.outlet()
    agent = await cloud.enroll()
    cred = await cloud.credential(agent)
    other, _ = new_key()
    data = await cloud.post("/v1/credentials",
                            {"closure": BlockClosure.make(other, cred.id, 0).model_dump(mode="json")},
                            agent.headers, 422)
    assert data["type"].endswith("/bad_closure")


async def test_expired_credential_with_unreconciled_numbers_flags_gap(cloud):
    await cloud.outlet()
    agent = await cloud.enroll()
    cred = await cloud.credential(agent, block_size=4)
    await cloud.reconcile(agent, [agent.seal(cred, 1)])
    assert await cloud.flags("KIN-01") == []
    cloud.clock.advance(hours=12, minutes=1)
    await cloud.post("/v1/admin/audit", {}, cloud.admin, 200)
    assert [f["numbers"] for f in await cloud.flags("KIN-01")] == [[[2, 4]]]


def device_invoice(outlet: dict, mid: str, number: int, prev_hash: str, when) -> dict:
    invoice = unsigned_invoice(mode="device", outlet=outlet, authority_id=mid, number=number,
                               timestamp=when, prev_hash=prev_hash)
    sec = invoice["security"]
    sec["code"] = "D357MYBKF6QSMSD2XWSEFT6S"  # the MCF's SIG: opaque to the cloud
    sec["qr_payload"] = f"RDCDEF01;{mid};{sec['code']};{outlet['merchant_nif']};20260301122547"
    sec["signature"] = None
    invoice["chain"]["hash"] = chain_hash(invoice)
    return invoice


async def test_device_invoice_needs_a_registered_mid(cloud):
    await cloud.outlet()
    agent = await cloud.enroll()
    invoice = device_invoice(agent.outlet, "AB01000001", 70, GENESIS_HASH, cloud.clock.now)
    answer = await cloud.reconcile(agent, [invoice])
    # Stored (the MCF sealed it), but flagged and out of the outlet's totals.
    assert statuses(answer) == [("accepted", None)] and answer["results"][0]["flag"] == "unregistered_device"
    assert [f["reason"] for f in await cloud.flags("KIN-01")] == ["unregistered_device"]

    await cloud.post("/v1/admin/outlets/KIN-01/devices", {"mid": "AB01000001", "nif": "A1234567B",
                                                          "firmware": {"version": "1.0.3"}}, cloud.admin, 201)
    following = device_invoice(agent.outlet, "AB01000001", 71, invoice["chain"]["hash"], cloud.clock.now)
    answer = await cloud.reconcile(agent, [invoice, following])
    assert statuses(answer) == [("duplicate", None), ("accepted", None)] and "flag" not in answer["results"][1]
    first, second = await cloud.ledger("KIN-01")
    assert (first["invoice"], second["invoice"]) == (invoice, following)  # the MCF's elements as they are
    assert second["chain_key"] == "device:KIN-01:AB01000001"
    assert (first["state"], second["state"]) == ("unregistered_device", "device-attested")


async def test_device_provisioning_refuses_another_nif(cloud):
    await cloud.outlet()
    agent = await cloud.enroll()
    data = await cloud.post("/v1/admin/outlets/KIN-01/devices", {"mid": "AB01000001", "nif": "OTHER-NIF"},
                            cloud.admin, 409)
    assert data["type"].endswith("/nif_mismatch")
    devices = (await cloud.get("/v1/outlets/KIN-01/devices", agent.headers))["devices"]
    assert devices == []


async def test_cloud_sealed_invoice_upload_is_acknowledged(cloud):
    await cloud.outlet()
    agent = await cloud.enroll()
    sealed = await cloud.post("/v1/seal", {"invoice": invoice_request().model_dump(mode="json")},
                              agent.headers, 201)
    answer = await cloud.reconcile(agent, [sealed])
    assert statuses(answer) == [("duplicate", None)]
    forged = copy.deepcopy(sealed)
    forged["security"]["fiscal_number"] = 99
    forged["chain"]["hash"] = chain_hash(forged)
    answer = await cloud.reconcile(agent, [forged])
    assert statuses(answer) == [("rejected", "not_sealed_by_cloud")]
    assert len(await cloud.ledger("KIN-01")) == 1


async def test_malformed_invoices_rejected_individually(cloud):
    await cloud.outlet()
    agent = await cloud.enroll()
    cred = await cloud.credential(agent)
    good = agent.seal(cred, 1)
    huge = copy.deepcopy(good)
    huge["security"]["fiscal_number"] = 2**70
    negative = copy.deepcopy(good)
    negative["security"]["fiscal_number"] = -1
    decimal = copy.deepcopy(good)
    decimal["security"]["fiscal_number"] = 1.0
    answer = await cloud.reconcile(agent, ["nope", {"id": "x"}, huge, negative, decimal, good])
    assert statuses(answer) == [("rejected", "invalid")] * 5 + [("accepted", None)]


async def test_delegated_invoice_with_a_tampered_qr_credential_part(cloud):
    await cloud.outlet()
    agent = await cloud.enroll()
    cred = await cloud.credential(agent)
    invoice = agent.seal(cred, 1, advance_chain=False)
    # A credential part claiming a bigger block: the seal itself is untouched.
    wider = cred.model_copy(update={"block_end": cred.block_end + 1000})
    other = json.loads(json.dumps(invoice))
    other["security"].pop("code"), other["security"].pop("qr_payload"), other["security"].pop("signature")
    other["chain"].pop("hash")
    apply_signature(other, agent.key, wider)
    answer = await cloud.reconcile(agent, [other])
    assert statuses(answer) == [("rejected", "bad_signature")]
