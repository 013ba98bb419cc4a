"""The cloud forwards every sealed invoice to the DGI's e-MCF (the simulator), exactly once,
in per-outlet order, within the DGI's limits, across faults and a SIGKILL of the cloud."""
from __future__ import annotations

import pytest

from tests.forwarding.fwd_support import (EmcfSim, check_exactly_once_in_order, cloud_config, fill_ledger, set_tokens,
                                          start_cloud, wait_forwarded)


@pytest.fixture
def sim(tmp_path):
    sims: list[EmcfSim] = []

    def start(*extra: str) -> EmcfSim:
        s = EmcfSim(tmp_path / "emcf.sqlite3").start(*extra)
        sims.append(s)
        return s
    yield start
    for s in sims:
        s.stop()


@pytest.fixture
def clouds():
    started = []
    yield started
    for c in started:
        c.stop()


def _run(tmp_path, sim, clouds, outlets: int, per_outlet: int, *sim_args: str, faults: tuple[str, ...] = ()):
    ledger = fill_ledger(tmp_path / "cloud", outlets, per_outlet)
    emcf = sim(*sim_args)
    for f in faults:
        emcf.fault(f)
    cloud = start_cloud(tmp_path / "cloud", emcf)
    clouds.append(cloud)
    set_tokens(tmp_path / "cloud", emcf, ledger)
    return ledger, emcf, cloud


def test_every_invoice_reaches_the_dgi_once_in_order_and_its_answer_is_recorded(tmp_path, sim, clouds):
    ledger, emcf, cloud = _run(tmp_path, sim, clouds, 4, 30, "--max-pending", "10")
    rows = wait_forwarded(cloud, 120)
    assert sum(r["counts"].get("normalized", 0) for r in rows) == 120, rows
    found = check_exactly_once_in_order(emcf, ledger)
    stats = emcf.stats()
    assert stats["rn_normalized_twice"] == 0 and stats["normalized"] == 120
    assert stats["since_start"].get("pending_limit", 0) == 0
    # The DGI's answer is beside the ledger entry, readable by the admin and the outlet's agent.
    first = found["confirmed"][0]
    outlet_id = "OUT-" + first["isf"].split("-")[1]
    admin = cloud.admin_token()
    answer = cloud.get(f"/v1/outlets/{outlet_id}/invoices/{first['rn']}/dgi", admin)
    assert answer["state"] == "normalized"
    assert answer["code"] == first["code"] and answer["uid"] == first["uid"]
    assert answer["qr_code"] == f"RDCDEF01;{first['nim']};{first['code']};A1234567B;" + answer["qr_code"][-14:]
    assert answer["counters"] == first["counters"]
    status = cloud.get(f"/v1/outlets/{outlet_id}/dgi", admin)
    assert status["waiting"] == 0 and status["counts"] == {"normalized": 30}
    # The sealed invoice itself is unchanged: the ledger still verifies.
    assert cloud.get(f"/v1/outlets/{outlet_id}/ledger/verify", admin)["valid"] is True


def _device_entry(data_dir, outlet_id: str = "OUT-001", mid: str = "AB01000001") -> str:
    """A device-sealed invoice reconciled into the outlet's ledger (its MCF bound by the operator)."""
    from datetime import datetime, timezone

    from cloud_stub.service import CloudService
    from fiscal.protocol import GENESIS_HASH
    from fiscal.seal import chain_hash
    from fiscal.signing import generate_private_key, public_key_text
    from tests.cloud.cloud_helpers import invoice_request, unsigned_invoice

    service = CloudService(cloud_config(data_dir, audit_interval=0, verify_workers=0))
    try:
        service.bind_device(outlet_id, mid, "A1234567B")
        enrolled = service.enroll(service.create_token(outlet_id)["token"],
                                  public_key_text(generate_private_key()), "box")
        agent = service.authenticate(enrolled["agent_token"])
        outlet = enrolled["outlet"]
        # As tests/cloud/test_cloud_devices.py builds one: the MCF's elements, opaque to the cloud.
        invoice = unsigned_invoice(mode="device", outlet=outlet, authority_id=mid, number=1,
                                   timestamp=datetime.now(timezone.utc).replace(microsecond=0),
                                   prev_hash=GENESIS_HASH, request=invoice_request("1160.00"))
        sec = invoice["security"]
        sec["code"] = f"DEV{mid[-4:]}{1:017d}"
        sec["qr_payload"] = f"RDCDEF01;{mid};{sec['code']};A1234567B;20260301122547"
        sec["signature"] = None
        invoice["chain"]["hash"] = chain_hash(invoice)
        answer = service.reconcile(agent, [invoice])
        assert answer["results"][0]["status"] == "accepted", answer
        return invoice["id"]
    finally:
        service.close()


def test_device_sealed_invoices_are_marked_device_reported_not_sent(tmp_path, sim, clouds):
    ledger = fill_ledger(tmp_path / "cloud", 1, 3)
    device_id = _device_entry(tmp_path / "cloud")
    emcf = sim()
    set_tokens(tmp_path / "cloud", emcf, ledger)
    cloud = start_cloud(tmp_path / "cloud", emcf)
    clouds.append(cloud)
    rows = wait_forwarded(cloud, 4)
    assert rows[0]["counts"] == {"normalized": 3, "device_reported": 1}
    check_exactly_once_in_order(emcf, ledger)  # the three cloud-sealed ones, and only them
    assert device_id not in {c["rn"] for c in emcf.confirmed()}
    answer = cloud.get(f"/v1/outlets/OUT-001/invoices/{device_id}/dgi", cloud.admin_token())
    assert answer["state"] == "device_reported" and "code" not in answer
