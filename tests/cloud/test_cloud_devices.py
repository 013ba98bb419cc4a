"""The device registry: only the operator binds an MCF to an outlet, per outlet, and another
tenant's MID neither blocks nor reveals anything. Device invoices are `device-attested`; those of
an unbound MID are stored, flagged and kept out of the outlet's totals. Over real HTTP.

Also: a ledger built by the previous schema (version 1) opens, and goes on.
"""
from __future__ import annotations

import json
import sqlite3
from datetime import timezone

import pytest
from aiohttp.test_utils import TestClient, TestServer

from fiscal.protocol import GENESIS_HASH
from fiscal.credential import DelegatedCredential
from fiscal.seal import chain_hash
from cloud_stub import ledger, repository
from cloud_stub.app import init_app
from cloud_stub.service import CloudService

from cloud_helpers import Agent, Harness, invoice_request, new_key, unsigned_invoice

MID = "AB01000001"


def device_invoice(outlet: dict, mid: str, number: int, prev_hash: str, when, price: str = "1160.00") -> dict:
    invoice = unsigned_invoice(mode="device", outlet=outlet, authority_id=mid, number=number,
                               timestamp=when, prev_hash=prev_hash, request=invoice_request(price))
    sec = invoice["security"]
    sec["code"] = f"DEV{mid[-4:]}{number:017d}"  # the MCF's SIG: opaque to the cloud
    sec["qr_payload"] = f"RDCDEF01;{mid};{sec['code']};{outlet['merchant_nif']};20260301122547"
    sec["signature"] = None
    invoice["chain"]["hash"] = chain_hash(invoice)
    return invoice


def statuses(answer: dict) -> list[tuple]:
    return [(r["status"], r.get("reason"), r.get("flag")) for r in answer["results"]]


async def two_tenants(cloud):
    await cloud.outlet()
    await cloud.outlet("LUB-01", nif="B7654321C", time_zone="Africa/Lubumbashi")
    return await cloud.enroll(), await cloud.enroll("LUB-01")


async def bind(cloud, outlet_id: str, mid: str, nif: str, expect: int = 201) -> dict:
    return await cloud.post(f"/v1/admin/outlets/{outlet_id}/devices", {"mid": mid, "nif": nif}, cloud.admin, expect)


# -- who may bind ----------------------------------------------------------------------------------


async def test_an_agent_cannot_bind_a_device(cloud):
    await cloud.outlet()
    agent = await cloud.enroll()
    for body in ({"mid": MID, "nif": "A1234567B"}, {"mid": MID, "nif": "A1234567B", "outlet_id": "KIN-01"}):
        data = await cloud.post("/v1/devices", body, agent.headers, 403)
        assert data["type"].endswith("/operator_only") and data["status"] == 403
    for path in ("/v1/admin/outlets/KIN-01/devices", "/v1/admin/outlets/KIN-01/provisioning-tokens"):
        data = await cloud.post(path, {"mid": MID, "nif": "A1234567B"} if path.endswith("devices") else {},
                                agent.headers, 403)
        assert data["type"].endswith("/admin_only")
    resp = await cloud.client.delete(f"/v1/admin/outlets/KIN-01/devices/{MID}", headers=agent.headers)
    assert resp.status == 403
    assert (await cloud.get("/v1/outlets/KIN-01/devices", agent.headers))["devices"] == []


async def test_operator_binds_lists_and_unbinds(cloud):
    await cloud.outlet()
    agent = await cloud.enroll()
    device = await bind(cloud, "KIN-01", MID, "A1234567B")
    assert (device["bound"], device["bound_by"], device["outlet_id"]) == (True, "admin", "KIN-01")
    await bind(cloud, "KIN-01", MID, "A1234567B", 200)  # again: refreshed
    listed = (await cloud.get("/v1/outlets/KIN-01/devices", agent.headers))["devices"]
    assert [(d["mid"], d["bound"]) for d in listed] == [(MID, True)]

    first = device_invoice(agent.outlet, MID, 1, GENESIS_HASH, cloud.clock.now)
    assert statuses(await cloud.reconcile(agent, [first])) == [("accepted", None, None)]

    resp = await cloud.client.delete(f"/v1/admin/outlets/KIN-01/devices/{MID}", headers=cloud.admin)
    assert resp.status == 200 and (await resp.json())["bound"] is False
    resp = await cloud.client.delete(f"/v1/admin/outlets/KIN-01/devices/{MID}", headers=cloud.admin)
    assert resp.status == 404 and (await resp.json())["type"].endswith("/device_not_found")
    # Unbound: its later invoices are stored, flagged and left out of the totals.
    second = device_invoice(agent.outlet, MID, 2, first["chain"]["hash"], cloud.clock.now)
    assert statuses(await cloud.reconcile(agent, [second])) == [("accepted", None, "unregistered_device")]
    assert [e["state"] for e in await cloud.ledger("KIN-01")] == ["device-attested", "unregistered_device"]
    # Bound again (e.g. after review), its next invoices count again.
    assert (await bind(cloud, "KIN-01", MID, "A1234567B", 201))["bound"] is True


async def test_same_merchant_binds_a_mid_to_one_outlet_at_a_time(cloud):
    await cloud.outlet()
    await cloud.outlet("KIN-02")
    await bind(cloud, "KIN-01", MID, "A1234567B")
    data = await bind(cloud, "KIN-02", MID, "A1234567B", 409)
    assert data["type"].endswith("/device_bound_elsewhere") and "KIN-01" in data["detail"]
    await cloud.client.delete(f"/v1/admin/outlets/KIN-01/devices/{MID}", headers=cloud.admin)
    await bind(cloud, "KIN-02", MID, "A1234567B", 201)


async def test_a_device_of_another_taxpayer_is_refused(cloud):
    await cloud.outlet()
    data = await bind(cloud, "KIN-01", MID, "B7654321C", 409)
    assert data["type"].endswith("/nif_mismatch")
    await cloud.post("/v1/admin/outlets/NOPE-01/devices", {"mid": MID, "nif": "A1234567B"}, cloud.admin, 404)
    data = await cloud.post("/v1/admin/outlets/KIN-01/devices", {"mid": "bad mid!", "nif": "A1234567B"},
                            cloud.admin, 422)
    assert data["type"].endswith("/bad_mid")


# -- tenants ---------------------------------------------------------------------------------------


async def test_another_tenants_mid_neither_blocks_nor_reveals(cloud):
    x, y = await two_tenants(cloud)
    await bind(cloud, "LUB-01", MID, "B7654321C")
    # X's operator binds the same MID (a mistake or a clone, it is no concern of Y's): no 409.
    await bind(cloud, "KIN-01", MID, "A1234567B", 201)
    assert [d["outlet_id"] for d in (await cloud.get("/v1/outlets/KIN-01/devices", x.headers))["devices"]] \
        == ["KIN-01"]
    await cloud.get("/v1/outlets/LUB-01/devices", x.headers, 404)
    # The same numbers on both sides: each outlet's own chain, no conflict between them.
    theirs = device_invoice(y.outlet, MID, 1, GENESIS_HASH, cloud.clock.now, "2320.00")
    assert statuses(await cloud.reconcile(y, [theirs])) == [("accepted", None, None)]
    ours = device_invoice(x.outlet, MID, 1, GENESIS_HASH, cloud.clock.now)
    assert statuses(await cloud.reconcile(x, [ours])) == [("accepted", None, None)]
    ledger_x = await cloud.ledger("KIN-01")
    assert [(e["chain_key"], e["state"]) for e in ledger_x] == [(f"device:KIN-01:{MID}", "device-attested")]


async def test_unbound_mid_of_another_tenant_reveals_nothing(cloud):
    x, y = await two_tenants(cloud)
    await bind(cloud, "LUB-01", MID, "B7654321C")
    theirs = device_invoice(y.outlet, MID, 5, GENESIS_HASH, cloud.clock.now)
    await cloud.reconcile(y, [theirs])
    # X's upload with Y's MID: exactly what an unknown MID gets (stored apart, flagged).
    ours = device_invoice(x.outlet, MID, 5, GENESIS_HASH, cloud.clock.now)
    unknown = device_invoice(x.outlet, "ZZ09999999", 5, GENESIS_HASH, cloud.clock.now)
    answer = await cloud.reconcile(x, [ours, unknown])
    assert statuses(answer) == [("accepted", None, "unregistered_device")] * 2
    flags = (await cloud.get("/v1/outlets/KIN-01/flags", x.headers))["flags"]
    assert sorted((f["reason"], f["authority_id"], f["numbers"]) for f in flags) == [
        ("unregistered_device", MID, [[5, 5]]), ("unregistered_device", "ZZ09999999", [[5, 5]])]
    assert all("LUB-01" not in f["detail"] and "B7654321C" not in f["detail"] for f in flags)
    assert (await cloud.get("/v1/outlets/LUB-01/flags", cloud.admin))["flags"] == []


# -- unregistered devices: stored, flagged, out of the totals ----------------------------------------


async def test_unregistered_device_invoices_are_out_of_the_totals(cloud):
    await cloud.outlet()
    agent = await cloud.enroll()
    cred = await cloud.credential(agent)
    await bind(cloud, "KIN-01", MID, "A1234567B")
    counted = [agent.seal(cred, 1), device_invoice(agent.outlet, MID, 1, GENESIS_HASH, cloud.clock.now)]
    a = device_invoice(agent.outlet, "ZZ09999999", 7, GENESIS_HASH, cloud.clock.now, "500.00")
    b = device_invoice(agent.outlet, "ZZ09999999", 8, a["chain"]["hash"], cloud.clock.now, "500.00")
    answer = await cloud.reconcile(agent, [*counted, a, b])
    assert statuses(answer) == [("accepted", None, None)] * 2 + [("accepted", None, "unregistered_device")] * 2
    summary = await cloud.get("/v1/outlets/KIN-01/summary", agent.headers)
    assert summary["count"] == 2 and summary["by_type"]["FV"]["total"] == "2320.00"
    assert summary["by_mode"] == {"delegated": 1, "device": 1}
    assert summary["excluded"] == {"unregistered_device": 2}
    report = await cloud.get("/v1/outlets/KIN-01/reports/x", agent.headers)
    assert "500.00" not in json.dumps(report["totals"]) and "2320.00" in json.dumps(report["totals"])
    # One flag for the device's numbers; a resend adds none.
    flags = [(f["reason"], f["authority_id"], f["numbers"]) for f in await cloud.flags("KIN-01")]
    assert flags == [("unregistered_device", "ZZ09999999", [[7, 8]])]
    assert statuses(await cloud.reconcile(agent, [a, b])) == [("duplicate", None, None)] * 2
    assert len(await cloud.flags("KIN-01")) == 1
    # Its next batch adds its numbers to the same open flag.
    c = device_invoice(agent.outlet, "ZZ09999999", 9, b["chain"]["hash"], cloud.clock.now, "500.00")
    assert statuses(await cloud.reconcile(agent, [c])) == [("accepted", None, "unregistered_device")]
    flags = [(f["reason"], f["authority_id"], f["numbers"]) for f in await cloud.flags("KIN-01")]
    assert flags == [("unregistered_device", "ZZ09999999", [[7, 9]])]
    assert (await cloud.get("/v1/outlets/KIN-01/ledger/verify", agent.headers))["valid"]


# -- provisioning tokens ---------------------------------------------------------------------------


async def test_provisioning_token_binds_one_device_to_its_outlet(cloud):
    x, _ = await two_tenants(cloud)
    issued = await cloud.post("/v1/admin/outlets/KIN-01/provisioning-tokens", {"ttl": "2h"}, cloud.admin, 201)
    token = issued["token"]
    assert token.startswith("stlp_") and issued["outlet_id"] == "KIN-01"
    tech = {"Authorization": f"Bearer {token}"}
    device = await cloud.post("/v1/devices", {"mid": MID, "nif": "A1234567B", "firmware": {"v": "1.0.3"}}, tech, 201)
    assert (device["outlet_id"], device["bound_by"], device["firmware"]) == ("KIN-01", "provisioning-token", {"v": "1.0.3"})
    await cloud.post("/v1/devices", {"mid": MID, "nif": "A1234567B"}, tech, 200)  # run again: refreshed
    data = await cloud.post("/v1/devices", {"mid": "AB01000002", "nif": "A1234567B"}, tech, 403)
    assert data["type"].endswith("/provisioning_token_used")
    # Its own outlet only; another taxpayer's device refused; an agent token is still not enough.
    await cloud.post("/v1/devices", {"mid": MID, "nif": "A1234567B", "outlet_id": "LUB-01"}, tech, 404)
    other = (await cloud.post("/v1/admin/outlets/KIN-01/provisioning-tokens", {}, cloud.admin, 201))["token"]
    data = await cloud.post("/v1/devices", {"mid": "AB01000003", "nif": "B7654321C"},
                            {"Authorization": f"Bearer {other}"}, 409)
    assert data["type"].endswith("/nif_mismatch")
    # The refusal bound nothing and left the token unused: it still binds one device.
    await cloud.post("/v1/devices", {"mid": "AB01000003", "nif": "A1234567B"}, {"Authorization": f"Bearer {other}"}, 201)
    mids = [d["mid"] for d in (await cloud.get("/v1/outlets/KIN-01/devices", x.headers))["devices"]]
    assert mids == [MID, "AB01000003"]
    # Expired, or never issued: 401.
    cloud.clock.advance(hours=3)
    data = await cloud.post("/v1/devices", {"mid": MID, "nif": "A1234567B"}, tech, 401)
    assert data["type"].endswith("/unauthorized")
    await cloud.post("/v1/devices", {"mid": MID, "nif": "A1234567B"}, {"Authorization": "Bearer stlp_nope"}, 401)
    await cloud.post("/v1/admin/outlets/NOPE-01/provisioning-tokens", {}, cloud.admin, 404)


# -- the CLI ---------------------------------------------------------------------------------------


def test_cli_binds_lists_unbinds_and_issues_tokens(tmp_path):
    from click.testing import CliRunner
    from cloud_stub.cli import cloud as cli

    def run(*args: str, ok: bool = True):
        result = CliRunner().invoke(cli, [*args, "--data", str(tmp_path / "c")])
        assert (result.exit_code == 0) == ok, result.output
        return result

    run("merchant", "add", "--nif", "A1234567B", "--name", "ABC")
    run("outlet", "add", "--merchant", "A1234567B", "--id", "KIN-01", "--name", "Gombe")
    assert "bound to outlet KIN-01" in run("devices", "bind", "--outlet", "KIN-01", "--mid", MID,
                                           "--nif", "A1234567B").output
    listed = json.loads(run("devices", "list", "--outlet", "KIN-01", "--json").stdout)
    assert [(d["mid"], d["bound"], d["bound_by"]) for d in listed] == [(MID, True, "admin")]
    refused = run("devices", "bind", "--outlet", "KIN-01", "--mid", "X1", "--nif", "OTHER", ok=False)
    assert "Error:" in refused.output and "Traceback" not in refused.output
    run("devices", "unbind", "--outlet", "KIN-01", "--mid", MID)
    assert "unbound" in run("devices", "list", "--outlet", "KIN-01").stdout
    assert run("devices", "token", "--outlet", "KIN-01").stdout.strip().startswith("stlp_")
    assert "no device" in run("devices", "unbind", "--outlet", "KIN-01", "--mid", "NOPE", ok=False).output


# -- a ledger of the previous schema ---------------------------------------------------------------


def _v1_insert(conn: sqlite3.Connection, outlet_id: str, seq: int, prev: str, invoice: dict, now: str) -> str:
    """A ledger row as version 1 wrote it (device numbers and chains keyed by MID alone)."""
    sec, mode = invoice["security"], invoice["mode"]
    mid = sec["authority_id"]
    number_key = f"device:{mid}:{sec['fiscal_number']}" if mode == "device" else f"stalela:{outlet_id}:{sec['fiscal_number']}"
    chain_key = f"device:{mid}" if mode == "device" else f"{mode}:{outlet_id}"
    entry = ledger.entry_hash(prev, outlet_id, seq, now, mode, mid, sec["fiscal_number"], invoice["chain"]["hash"])
    conn.execute("INSERT INTO ledger (outlet_id, seq, recorded_at, mode, inv_type, authority_id, fiscal_number, "
                 "number_key, chain_key, sealed_at, invoice_hash, prev_ledger_hash, ledger_hash, invoice) "
                 "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                 (outlet_id, seq, now, mode, invoice["type"], mid, sec["fiscal_number"], number_key, chain_key,
                  now, invoice["chain"]["hash"], prev, entry, ledger.stored_text(invoice)))
    return entry


def _as_version_1(path, monkeypatch) -> None:
    """Rebuild the database at `path` at schema version 1, with its rows of the tables version 1 has."""
    today = path.with_name("today.sqlite3")
    path.rename(today)
    with monkeypatch.context() as m:
        m.setattr(repository, "MIGRATIONS", repository.MIGRATIONS[:1])
        repository.Store(path, background_checkpoints=False).close()
    conn = sqlite3.connect(path)
    conn.execute("ATTACH DATABASE ? AS today", (str(today),))
    with conn:
        for table in ("merchants", "outlets", "counters", "enrollment_tokens", "agents", "credentials"):
            columns = ", ".join(c[1] for c in conn.execute(f"PRAGMA main.table_info({table})"))
            conn.execute(f"INSERT INTO main.{table} ({columns}) SELECT {columns} FROM today.{table}")
    conn.execute("DETACH DATABASE today")
    conn.close()


@pytest.fixture
async def legacy(config, clock, monkeypatch):
    """A cloud whose database was built by schema version 1, then served by this version."""
    # The registry, the agent and its credential as today's service writes them, then carried
    # into a database of version 1 (today's statements write columns version 1 lacks).
    old = CloudService(config)
    old.add_merchant("A1234567B", "ABC", {})
    old.add_outlet("KIN-01", "A1234567B", "Gombe", isf="ISF-1")
    key, public = new_key()
    enrolled = old.enroll(old.create_token("KIN-01")["token"], public, "box")
    agent = Agent(id=enrolled["agent_id"], token=enrolled["agent_token"], outlet=enrolled["outlet"], key=key)
    row = old.authenticate(agent.token)
    cred = DelegatedCredential.model_validate(old.issue_credential(row)[0])
    old.close()
    _as_version_1(config.db_path, monkeypatch)
    sale = agent.seal(cred, 1, request=invoice_request("3600.00"))
    device = device_invoice(agent.outlet, MID, 70, GENESIS_HASH, clock.now)
    now = clock.now.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")
    conn = sqlite3.connect(config.db_path)
    with conn:
        conn.execute("INSERT INTO devices (mid, nif, outlet_id, status, firmware, provisioned_at, last_seen) "
                     "VALUES (?, 'A1234567B', 'KIN-01', 'active', '{}', ?, ?)", (MID, now, now))
        prev = _v1_insert(conn, "KIN-01", 1, GENESIS_HASH, sale, now)
        _v1_insert(conn, "KIN-01", 2, prev, device, now)
    conn.close()

    service = CloudService(config)  # migrates to version 2
    client = TestClient(TestServer(init_app(config, service), host="127.0.0.1"))
    await client.start_server()
    try:
        yield Harness(client, service, clock), agent, cred, sale, device
    finally:
        await client.close()
        service.close()


async def test_a_ledger_of_the_previous_schema_opens_and_goes_on(legacy, config):
    cloud, agent, cred, sale, device = legacy
    conn = sqlite3.connect(config.db_path)
    versions = [v for (v,) in conn.execute("SELECT version FROM schema_migrations ORDER BY version")]
    assert versions == list(range(1, len(repository.MIGRATIONS) + 1))  # migrated to the latest
    conn.close()
    assert (await cloud.get("/v1/outlets/KIN-01/ledger/verify", agent.headers))["valid"]
    entries = await cloud.ledger("KIN-01")
    assert [(e["mode"], e["state"]) for e in entries] == [("delegated", "verified"), ("device", "device-attested")]
    # The binding an agent made then is kept, flagged for the operator's review.
    devices = (await cloud.get("/v1/outlets/KIN-01/devices", cloud.admin))["devices"]
    assert [(d["mid"], d["bound"], d["bound_by"]) for d in devices] == [(MID, True, "agent")]
    flags = (await cloud.get("/v1/outlets/KIN-01/flags?open=1", cloud.admin))["flags"]
    assert [(f["reason"], f["authority_id"]) for f in flags] == [("device_review", MID)]
    confirmed = await cloud.post("/v1/admin/outlets/KIN-01/devices", {"mid": MID, "nif": "A1234567B"},
                                 cloud.admin, 200)
    assert confirmed["bound_by"] == "admin"  # the operator confirmed it
    assert (await cloud.get("/v1/outlets/KIN-01/flags?open=1", cloud.admin))["flags"] == []
    # The old device chain goes on; its invoices are still known (duplicates, not chain breaks).
    following = device_invoice(agent.outlet, MID, 71, device["chain"]["hash"], cloud.clock.now)
    answer = await cloud.reconcile(agent, [device, following])
    assert statuses(answer) == [("duplicate", None, None), ("accepted", None, None)]
    conflicting = device_invoice(agent.outlet, MID, 70, GENESIS_HASH, cloud.clock.now, "2320.00")
    assert statuses(await cloud.reconcile(agent, [conflicting])) == [("rejected", "conflict", None)]
    # An invoice sealed before the upgrade is the original of a credit note after it.
    code = sale["security"]["code"]
    agent.prev_hash = sale["chain"]["hash"]
    credit = agent.seal(cred, 2, request=invoice_request("3600.00", "FA", reference=code))
    over = agent.seal(cred, 3, advance_chain=False, request=invoice_request("0.01", "FA", reference=code))
    answer = await cloud.reconcile(agent, [sale, credit, over])
    assert [s[:2] for s in statuses(answer)] == [("duplicate", None), ("accepted", None),
                                                 ("rejected", "credit_exceeds_original")]
    assert (await cloud.get("/v1/outlets/KIN-01/ledger/verify", agent.headers))["valid"]


# -- a real agent sealing with a (simulated) MCF -----------------------------------------------------


def test_a_real_agents_device_invoices_add_up_and_are_device_attested(tmp_path):
    """Agent, cloud and MCF simulator as real processes/ptys: the device's invoices, recomputed by
    the cloud, add up; bound by the operator they are device-attested and count in the totals."""
    from agent.config import write_default_config
    from tests.device.device_support import MID as SIM_MID, SimDevice
    from tests.support import NIF, CloudProcess, EnrolledAgent, invoice

    cloud = CloudProcess(tmp_path / "cloud")
    token = cloud.add_outlet()
    cloud.start()
    sim = SimDevice(tmp_path / "sim")
    agent = None
    try:
        agent = EnrolledAgent(tmp_path / "agent", cloud, token, policy=("device", "delegated"))
        write_default_config(agent.data_dir, agent__port=agent.port, cloud__url=cloud.url, sync__interval=0.5,
                             credential__check_interval=1, signer__policy=["device", "delegated"],
                             device__url=str(sim.link_path))
        cloud.cli("devices", "bind", "--outlet", agent.outlet, "--mid", SIM_MID, "--nif", NIF)
        agent.start()
        bodies = [invoice("DEV-1", 3), invoice("DEV-2", 5, price_mode="HT"),
                  invoice("DEV-3", 2, payments=[{"method": "C", "amount": "100.00"}, {"method": "E", "amount": "900.00"}])]
        sealed = []
        for body in bodies:
            status, answer, _ = agent.post("/v1/invoices", body)
            assert status == 201 and answer["mode"] == "device", answer
            sealed.append(answer)
        # A credit note of the first: its original reaches the cloud before it (sealing order).
        credit = invoice("DEV-4", 1, type="FA", reference={"nature": "COR", "code": sealed[0]["security"]["code"]})
        status, answer, _ = agent.post("/v1/invoices", credit)
        assert status == 201 and answer["mode"] == "device", answer
        sealed.append(answer)
        assert agent.wait_synced() == {"accepted": 4}
        entries = cloud.get(f"/v1/outlets/{agent.outlet}/ledger", cloud.admin_token())["entries"]
        assert [(e["mode"], e["state"]) for e in entries] == [("device", "device-attested")] * 4
        assert [e["invoice"]["totals"] for e in entries] == [s["totals"] for s in sealed]
        summary = cloud.get(f"/v1/outlets/{agent.outlet}/summary", cloud.admin_token())
        assert summary["count"] == 4 and summary["excluded"] == {} and summary["by_type"]["FA"]["count"] == 1
    finally:
        if agent is not None:
            agent.stop()
        sim.stop()
        cloud.stop()
