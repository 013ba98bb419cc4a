"""The cloud trusts no agent's arithmetic: every invoice it seals or reconciles adds up by the tax
engine, and a credit note needs its original in the outlet's ledger and never exceeds it.

Over real HTTP (an aiohttp server on 127.0.0.1, a SQLite file). A compromised box holds a valid
credential and key: it can sign anything, so these invoices carry valid signatures.
"""
from __future__ import annotations

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from fiscal.protocol import GENESIS_HASH
from fiscal.seal import chain_hash
from cloud_stub.config import CloudConfig

from cloud_helpers import invoice_request, unsigned_invoice


@pytest.fixture(params=["in-process", "workers"])
def config(request, tmp_path, clock) -> CloudConfig:
    """Reconciliation twice: checks in the service's process, then in two verifier workers."""
    workers = 0 if request.param == "in-process" else 2
    return CloudConfig(data_dir=tmp_path / "cloud", audit_interval=0, gap_grace=timedelta(0), clock=clock,
                       verify_workers=workers, parallel_min_batch=1)


def statuses(answer: dict) -> list[tuple[str, str | None]]:
    return [(r["status"], r.get("reason")) for r in answer["results"]]


async def seal_online(cloud, agent, request, expect: int = 201) -> dict:
    return await cloud.post("/v1/seal", {"invoice": request.model_dump(mode="json")}, agent.headers, expect)


async def open_flags(cloud, outlet_id: str = "KIN-01") -> list[tuple[str, list]]:
    flags = (await cloud.get(f"/v1/outlets/{outlet_id}/flags?open=1", cloud.admin))["flags"]
    return [(f["reason"], f["numbers"]) for f in flags]


async def setup(cloud):
    await cloud.outlet()
    agent = await cloud.enroll()
    return agent, await cloud.credential(agent)


# -- online sealing -----------------------------------------------------------------------------


async def test_online_credit_note_cannot_exceed_its_original(cloud):
    await cloud.outlet()
    agent = await cloud.enroll()
    original = await seal_online(cloud, agent, invoice_request("3600.00"))
    code = original["security"]["code"]
    data = await seal_online(cloud, agent, invoice_request("99999.00", "FA", reference=code), 422)
    assert data["type"].endswith("/credit_exceeds_original") and "3600.00" in data["detail"]
    # Nothing sealed, no number taken; the outlet is flagged.
    assert len(await cloud.ledger("KIN-01")) == 1
    assert [r for r, _ in await open_flags(cloud)] == ["credit_exceeds_original"]
    # Credits add up to the original, not beyond.
    await seal_online(cloud, agent, invoice_request("1000.00", "FA", reference=code))
    await seal_online(cloud, agent, invoice_request("2600.00", "FA", reference=code))
    data = await seal_online(cloud, agent, invoice_request("0.01", "FA", reference=code), 422)
    assert data["type"].endswith("/credit_exceeds_original")
    numbers = [e["fiscal_number"] for e in await cloud.ledger("KIN-01")]
    assert numbers == [1, 2, 3]  # refusals take no number


async def test_online_credit_note_needs_a_known_original(cloud):
    await cloud.outlet()
    agent = await cloud.enroll()
    data = await seal_online(cloud, agent, invoice_request("10.00", "FA", reference="ABCDEFGHJKMNPQRSTVWXYZ23"), 422)
    assert data["type"].endswith("/unknown_original")
    assert data["errors"][0]["field"] == "reference.code"
    credit_of = (await seal_online(cloud, agent, invoice_request("500.00"))) ["security"]["code"]
    credit = await seal_online(cloud, agent, invoice_request("10.00", "FA", reference=credit_of))
    data = await seal_online(cloud, agent, invoice_request("1.00", "FA", reference=credit["security"]["code"]), 422)
    assert data["type"].endswith("/original_is_credit_note")
    assert sorted(r for r, _ in await open_flags(cloud)) == ["original_is_credit_note", "unknown_original"]
    assert len(await cloud.ledger("KIN-01")) == 2


async def test_online_credit_note_of_another_outlet_is_unknown(cloud):
    await cloud.outlet()
    await cloud.outlet("LUB-01", nif="B7654321C", time_zone="Africa/Lubumbashi")
    x = await cloud.enroll()
    y = await cloud.enroll("LUB-01")
    theirs = (await seal_online(cloud, y, invoice_request("3600.00")))["security"]["code"]
    data = await seal_online(cloud, x, invoice_request("10.00", "FA", reference=theirs), 422)
    assert data["type"].endswith("/unknown_original")  # the same answer as for a code nobody has


# -- reconciliation: amounts ----------------------------------------------------------------------


async def test_signed_invoice_whose_totals_do_not_match_its_items_is_rejected_and_flagged(cloud):
    agent, cred = await setup(cloud)
    good = agent.seal(cred, 1)
    inflated = agent.seal(cred, 2, advance_chain=False,
                          tamper=lambda inv: inv["totals"].update(total="1.00", paid="1.00"))
    answer = await cloud.reconcile(agent, [good, inflated])
    assert statuses(answer) == [("accepted", None), ("rejected", "totals_mismatch")]
    assert "totals.total is '1.00'; the tax engine gives '1160.00'" in answer["results"][1]["detail"]
    assert [e["fiscal_number"] for e in await cloud.ledger("KIN-01")] == [1]
    flags = (await cloud.get("/v1/outlets/KIN-01/flags", agent.headers))["flags"]
    assert [(f["reason"], f["numbers"], f["credential_id"], f["authority_id"]) for f in flags] == \
        [("totals_mismatch", [[2, 2]], cred.id, cred.id)]
    rejection = (await cloud.get("/v1/outlets/KIN-01/rejections", agent.headers))["rejections"][0]
    assert (rejection["reason"], rejection["fiscal_number"]) == ("totals_mismatch", 2)
    # The same upload again is rejected again, without a second flag.
    answer = await cloud.reconcile(agent, [inflated])
    assert statuses(answer) == [("rejected", "totals_mismatch")]
    assert len(await open_flags(cloud)) == 1


@pytest.mark.parametrize("edit, reason", [
    (lambda inv: inv["lines"][0].update(vat="0.00", ht="1160.00"), "lines_mismatch"),
    (lambda inv: inv["totals"]["by_group"]["B"].update(vat="1.00"), "groups_mismatch"),
    (lambda inv: inv["totals"].update(vat="0.00"), "totals_mismatch"),
    (lambda inv: inv["totals"].update(change="5.00"), "totals_mismatch"),
    (lambda inv: inv["totals"]["payments"][0].update(method="C"), None),  # a card payment: still adds up
    (lambda inv: inv["items"][0].update(unit_price="9999.00"), "lines_mismatch"),
    (lambda inv: inv["items"][0].update(tax_group="C"), "lines_mismatch"),
    (lambda inv: inv.update(lines=inv["lines"] * 2), "lines_mismatch"),
    (lambda inv: inv.update(reference={"nature": "COR", "code": "A" * 24}), "invoice_refused"),  # FV
    (lambda inv: inv["items"][0].update(tax_group="Z"), "invalid"),  # not even the contract
], ids=["line", "group", "vat", "change", "card", "price", "rate", "extra-line", "fv-reference", "no-group"])
async def test_each_figure_is_the_tax_engines(cloud, edit, reason):
    agent, cred = await setup(cloud)
    invoice = agent.seal(cred, 1, advance_chain=False, tamper=edit)
    answer = await cloud.reconcile(agent, [invoice])
    assert statuses(answer) == [("accepted", None) if reason is None else ("rejected", reason)]
    flagged = [r for r, _ in await open_flags(cloud)]
    assert flagged == ([] if reason in (None, "invalid") else [reason])


async def test_the_table_in_force_on_the_invoices_date(cloud):
    """Group C was 8 % until 2025 and 5 % since 2026: a device invoice of 2025 is computed at 8 %."""
    await cloud.outlet()
    agent = await cloud.enroll()
    await cloud.post("/v1/admin/outlets/KIN-01/devices", {"mid": "AB01000001", "nif": "A1234567B"}, cloud.admin, 201)
    then = datetime(2025, 6, 2, 10, 0, tzinfo=ZoneInfo("Africa/Kinshasa"))
    right = device_invoice(agent.outlet, "AB01000001", 1, GENESIS_HASH, then, invoice_request("1080.00", group="C"))
    assert right["totals"]["vat"] == "80.00"
    # Computed with today's table (5 %), dated 2025.
    wrong = device_invoice(agent.outlet, "AB01000001", 2, right["chain"]["hash"], datetime(2026, 2, 1, 10, 0,
                           tzinfo=then.tzinfo), invoice_request("1080.00", group="C"))
    wrong["security"]["timestamp"] = then.replace(hour=11).isoformat()
    wrong["chain"]["hash"] = chain_hash(wrong)
    # Group O exists only since 2026.
    too_early = device_invoice(agent.outlet, "AB01000001", 2, right["chain"]["hash"], datetime(2026, 2, 1, 10, 0,
                               tzinfo=then.tzinfo), invoice_request("100.00", group="O"))
    too_early["security"]["timestamp"] = then.replace(hour=12).isoformat()
    too_early["chain"]["hash"] = chain_hash(too_early)
    answer = await cloud.reconcile(agent, [right, wrong, too_early])
    assert statuses(answer) == [("accepted", None), ("rejected", "lines_mismatch"), ("rejected", "invoice_refused")]
    assert "does not exist on 2025-06-02" in answer["results"][2]["detail"]
    entry = (await cloud.ledger("KIN-01"))[0]
    assert entry["state"] == "device-attested"
    flags = (await cloud.get("/v1/outlets/KIN-01/flags", cloud.admin))["flags"]
    assert [(f["reason"], f["authority_id"], f["credential_id"]) for f in flags] == [
        ("lines_mismatch", "AB01000001", None), ("invoice_refused", "AB01000001", None)]


async def test_the_day_a_table_changes_the_eves_table_is_accepted(cloud):
    """Amounts computed just before midnight, stamped just after, on the day the table changes."""
    await cloud.outlet()
    agent = await cloud.enroll()
    await cloud.post("/v1/admin/outlets/KIN-01/devices", {"mid": "AB01000001", "nif": "A1234567B"}, cloud.admin, 201)
    zone = ZoneInfo("Africa/Kinshasa")
    eve = datetime(2025, 12, 31, 23, 59, 59, tzinfo=zone)
    prev = GENESIS_HASH
    batch = []
    for number, stamped in ((1, datetime(2026, 1, 1, 0, 0, 1, tzinfo=zone)),
                            (2, datetime(2026, 1, 2, 0, 0, 1, tzinfo=zone))):
        invoice = device_invoice(agent.outlet, "AB01000001", number, prev, eve, invoice_request("1080.00", group="C"))
        invoice["security"]["timestamp"] = stamped.isoformat()
        invoice["chain"]["hash"] = chain_hash(invoice)
        batch.append(invoice)
        prev = invoice["chain"]["hash"]
    answer = await cloud.reconcile(agent, batch)
    # The next day, the old table is no excuse.
    assert statuses(answer) == [("accepted", None), ("rejected", "lines_mismatch")]


def device_invoice(outlet: dict, mid: str, number: int, prev_hash: str, when, request=None) -> dict:
    invoice = unsigned_invoice(mode="device", outlet=outlet, authority_id=mid, number=number,
                               timestamp=when, prev_hash=prev_hash, request=request)
    sec = invoice["security"]
    sec["code"] = f"DEVICECODE{number:014d}"  # the MCF's SIG: opaque to the cloud
    sec["qr_payload"] = f"RDCDEF01;{mid};{sec['code']};{outlet['merchant_nif']};20260301122547"
    sec["signature"] = None
    invoice["chain"]["hash"] = chain_hash(invoice)
    return invoice


async def test_device_invoice_that_does_not_add_up_is_rejected(cloud):
    await cloud.outlet()
    agent = await cloud.enroll()
    await cloud.post("/v1/admin/outlets/KIN-01/devices", {"mid": "AB01000001", "nif": "A1234567B"}, cloud.admin, 201)
    invoice = device_invoice(agent.outlet, "AB01000001", 1, GENESIS_HASH, cloud.clock.now)
    invoice["totals"]["total"] = "5.00"
    invoice["chain"]["hash"] = chain_hash(invoice)
    answer = await cloud.reconcile(agent, [invoice])
    assert statuses(answer) == [("rejected", "totals_mismatch")]
    assert await cloud.ledger("KIN-01") == []


# -- reconciliation: credit notes -----------------------------------------------------------------


async def test_credit_note_with_a_reference_that_does_not_exist(cloud):
    agent, cred = await setup(cloud)
    credit = agent.seal(cred, 1, advance_chain=False,
                        request=invoice_request("5000000.00", "FA", reference="NOSUCHINVOICE00000000000"))
    answer = await cloud.reconcile(agent, [credit])
    assert statuses(answer) == [("rejected", "unknown_original")]
    assert await cloud.ledger("KIN-01") == []
    assert await open_flags(cloud) == [("unknown_original", [[1, 1]])]


async def test_credits_against_one_original_never_exceed_it(cloud):
    agent, cred = await setup(cloud)
    original = agent.seal(cred, 1, request=invoice_request("3600.00"))
    code = original["security"]["code"]
    first = agent.seal(cred, 2, request=invoice_request("3000.00", "FA", reference=code))
    too_much = agent.seal(cred, 3, advance_chain=False, request=invoice_request("600.01", "FA", reference=code))
    # In one batch: the original counts as soon as it is accepted, and so does each credit.
    answer = await cloud.reconcile(agent, [original, first, too_much])
    assert statuses(answer) == [("accepted", None), ("accepted", None), ("rejected", "credit_exceeds_original")]
    assert "3600.00 less 3000.00 already credited = 600.00" in answer["results"][2]["detail"]
    rest = agent.seal(cred, 3, request=invoice_request("600.00", "FA", reference=code))
    answer = await cloud.reconcile(agent, [rest])
    assert statuses(answer) == [("accepted", None)]
    again = agent.seal(cred, 4, advance_chain=False, request=invoice_request("0.01", "FA", reference=code))
    assert statuses(await cloud.reconcile(agent, [again])) == [("rejected", "credit_exceeds_original")]
    # A credit note of a credit note is no credit at all.
    of_credit = agent.seal(cred, 4, advance_chain=False,
                           request=invoice_request("1.00", "FA", reference=first["security"]["code"]))
    assert statuses(await cloud.reconcile(agent, [of_credit])) == [("rejected", "original_is_credit_note")]
    # Online and delegated credits share the original's limit.
    data = await seal_online(cloud, agent, invoice_request("0.01", "FA", reference=code), 422)
    assert data["type"].endswith("/credit_exceeds_original")
    reasons = sorted(r for r, _ in await open_flags(cloud))
    assert reasons == ["credit_exceeds_original", "credit_exceeds_original", "credit_exceeds_original",
                       "original_is_credit_note"]


async def test_credit_note_against_an_online_sealed_original(cloud):
    agent, cred = await setup(cloud)
    online = await seal_online(cloud, agent, invoice_request("1160.00"))
    credit = agent.seal(cred, cred.block_start, request=invoice_request("1160.00", "FA",
                                                                       reference=online["security"]["code"]))
    assert statuses(await cloud.reconcile(agent, [credit])) == [("accepted", None)]


async def test_credit_note_cannot_refer_to_another_outlets_invoice(cloud):
    await cloud.outlet()
    await cloud.outlet("LUB-01", nif="B7654321C", time_zone="Africa/Lubumbashi")
    x = await cloud.enroll()
    y = await cloud.enroll("LUB-01")
    cred_x, cred_y = await cloud.credential(x), await cloud.credential(y)
    theirs = y.seal(cred_y, cred_y.block_start, request=invoice_request("3600.00"))
    assert statuses(await cloud.reconcile(y, [theirs])) == [("accepted", None)]
    credit = x.seal(cred_x, 1, request=invoice_request("10.00", "FA", reference=theirs["security"]["code"]))
    answer = await cloud.reconcile(x, [credit])
    assert statuses(answer) == [("rejected", "unknown_original")]
    assert "LUB-01" not in answer["results"][0]["detail"]
