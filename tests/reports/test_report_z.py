"""X and Z reports after a day of mixed invoices: totals, reset, chain, CLI, verify, tampering."""
from __future__ import annotations

import pytest

import json
from collections import defaultdict
from datetime import datetime
from decimal import Decimal

from fiscal.protocol import GENESIS_HASH
from tests.reports.helpers import open_service, stalela, varied_request
from tests.support import NIF

MID = "XX01710090-1"


def _record_device_invoices(data_dir, n: int) -> None:
    """Device-mode rows as the device signer stores them (journal.record_device_seal)."""
    service = open_service(data_dir)
    try:
        today = datetime.now(service.tz).strftime("%Y%m%d")
        for i in range(n):
            job = service.prepare(varied_request(900 + i, request_id=f"DEV-{i}", type="FV"))
            device = {"fc": i + 1, "tc": i + 1, "ft": "FV", "dt": f"{today}0{i}1500", "mid": MID, "nif": NIF,
                      "sig": f"TESTFACTHQBAX2F3K22NMDY{i}"}
            service.journal.run_in_writer(
                lambda c, job=job, device=device: service.journal.record_device_seal(c, job, device)).result(10)
    finally:
        service.close()


def _expected(invoices: list[dict]) -> dict:
    """The report's figures computed here independently, straight from the invoices."""
    exp = {"net_total": Decimal(0), "net_vat": Decimal(0), "credit_total": Decimal(0), "by_type": defaultdict(int),
           "groups": defaultdict(lambda: [Decimal(0), Decimal(0), Decimal(0)]), "payments": defaultdict(Decimal),
           "numbers": defaultdict(list)}
    for inv in invoices:
        sign = -1 if inv["type"] in ("FA", "EA") else 1
        t = inv["totals"]
        exp["net_total"] += sign * Decimal(t["total"])
        exp["net_vat"] += sign * Decimal(t["vat"])
        if sign < 0:
            exp["credit_total"] += Decimal(t["total"])
        exp["by_type"][inv["type"]] += 1
        for g, v in t["by_group"].items():
            acc = exp["groups"][g]
            acc[0] += sign * Decimal(v["ht"])
            acc[1] += sign * Decimal(v["vat"])
            acc[2] += sign * Decimal(v["total"])
        for p in t["payments"]:
            exp["payments"][p["method"]] += sign * Decimal(p["amount"])
        exp["numbers"][inv["security"]["authority_id"]].append(inv["security"]["fiscal_number"])
    return exp


@pytest.mark.clock_edges
def test_z_after_a_day_of_mixed_invoices(harness):
    harness.add_credential(harness.credential(1, 1000))
    _record_device_invoices(harness.data_dir, 3)
    harness.start()
    sealed = []
    for i in range(25):
        status, inv, _ = harness.post("/v1/invoices", varied_request(i))
        assert status == 201, inv
        sealed.append(inv)
    first = sealed[0]
    credit = varied_request(100, type="FA", items=[first["items"][0]], payments=[{"method": "C"}],
                            reference={"nature": "RAM", "code": first["security"]["code"]})
    status, fa, _ = harness.post("/v1/invoices", credit)
    assert status == 201, fa
    all_invoices = harness.get("/v1/invoices?limit=500&status=sealed")[1]["items"]
    assert len(all_invoices) == 29
    assert {i["type"] for i in all_invoices} == {"FV", "FT", "EV", "FA"}
    assert {i["mode"] for i in all_invoices} == {"device", "delegated"}
    assert {p["method"] for i in all_invoices for p in i["totals"]["payments"]} >= set("EVCMDA")

    status, x_before, _ = harness.post("/v1/reports/x")
    status, z, _ = harness.post("/v1/reports/z")
    assert status == 201, z
    assert z["number"] == 1 and z["chain"]["prev_hash"] == GENESIS_HASH and z["chain"]["key"] == "Z:KIN-001"
    assert x_before["totals"] == z["totals"]  # X changes nothing and sees what the Z closes
    exp = _expected(all_invoices)
    t = z["totals"]
    assert t["count"] == 29 and t["by_type"]["FA"]["count"] == 1
    assert {k: v["count"] for k, v in t["by_type"].items()} == dict(exp["by_type"])
    assert Decimal(t["net"]["total"]) == exp["net_total"] and Decimal(t["net"]["vat"]) == exp["net_vat"]
    assert Decimal(t["credits"]["total"]) == exp["credit_total"] == Decimal(fa["totals"]["total"])
    assert Decimal(t["sales"]["total"]) - Decimal(t["credits"]["total"]) == exp["net_total"]
    for g, (ht, vat, total) in exp["groups"].items():
        assert [Decimal(t["net"]["by_group"][g][k]) for k in ("ht", "vat", "total")] == [ht, vat, total], g
    assert t["net"]["by_group"]["B"]["rate"] == "16.00" and "E" in t["net"]["by_group"]
    assert {m: Decimal(v) for m, v in t["net"]["payments"].items()} == dict(exp["payments"])
    for auth, numbers in exp["numbers"].items():
        a = t["authorities"][auth]
        assert (a["first"], a["last"], a["count"]) == (min(numbers), max(numbers), len(numbers))
    assert t["authorities"][MID]["mode"] == "device"
    assert z["health"]["mode"] == "delegated" and z["health"]["sync"]["pending"] >= 26

    # The next X starts from zero; the Z is stored and served.
    x = harness.post("/v1/reports/x")[1]
    assert x["totals"]["count"] == 0 and x["totals"]["net"]["total"] == "0.00" and x["since_z"] == 1
    listed = harness.get("/v1/reports?type=Z")[1]["items"]
    assert [r["id"] for r in listed] == [z["id"]]
    assert harness.get(f"/v1/reports/{z['id']}")[1] == z
    text = harness.get(f"/v1/reports/{z['id']}.txt")[1].decode()
    assert "RAPPORT Z N° 1" in text and "AVOIRS (déduits)" in text and z["hash"][:42] in text
    pdf = harness.get(f"/v1/reports/{z['id']}.pdf")[1]
    assert pdf.startswith(b"%PDF")
    a = harness.get("/v1/reports/a")[1]
    assert a["count"] == sum(len(i["items"]) for i in all_invoices)
    assert harness.get("/v1/reports/a?from=2026-13-01")[0] == 400

    # A Z from the CLI while the daemon runs: serialized, chained to the first.
    status, more, _ = harness.post("/v1/invoices", varied_request(500))
    res = stalela("report", "z", "--data", str(harness.data_dir), "--format", "json", check=True)
    z2 = json.loads(res.stdout)
    assert z2["number"] == 2 and z2["chain"]["prev_hash"] == z["hash"] and z2["totals"]["count"] == 1
    assert z2["from_seq"] == z["to_seq"] + 1
    assert harness.post("/v1/reports/x")[1]["totals"]["count"] == 0
    res = harness.verify()
    assert res.returncode == 0, res.stderr

    # Tampering with a stored Z body is found and named.
    harness.stop()
    conn = harness.db()
    body = json.loads(conn.execute("SELECT body FROM reports WHERE number = 1").fetchone()[0])
    body["totals"]["net"]["total"] = "1.00"
    conn.execute("UPDATE reports SET body = ? WHERE number = 1", (json.dumps(body),))
    conn.close()
    res = harness.verify()
    assert res.returncode == 1
    assert f"Z report 1 ({z['id']})" in res.stderr and "altered" in res.stderr


def test_cli_reports_on_the_data_folder(harness):
    harness.add_credential(harness.credential(1, 100))
    from tests.reports.helpers import seal_in_process
    seal_in_process(harness.data_dir, [varied_request(i) for i in range(10)])
    x = stalela("report", "x", "--data", str(harness.data_dir), check=True)
    assert "RAPPORT X" in x.stdout and "Nombre de factures" in x.stdout
    a = json.loads(stalela("report", "a", "--data", str(harness.data_dir), "--format", "json", check=True).stdout)
    assert a["count"] == sum(3 if i % 5 != 3 else 2 for i in range(10))
    bad = stalela("report", "a", "--data", str(harness.data_dir), "--from", "yesterday")
    assert bad.returncode != 0 and "Traceback" not in bad.stderr and "YYYY-MM-DD" in bad.stderr
    missing = stalela("report", "z", "--data", str(harness.data_dir / "nowhere"))
    assert missing.returncode != 0 and "Traceback" not in missing.stderr


def test_scheduled_z_is_due_once_after_the_configured_time(harness):
    from agent.reports import close_z, z_due

    harness.add_credential(harness.credential(1, 100))
    from tests.reports.helpers import seal_in_process
    seal_in_process(harness.data_dir, [varied_request(i) for i in range(3)])
    service = open_service(harness.data_dir)
    try:
        conn = service.journal.reader
        now = datetime.now(service.tz)
        assert z_due(conn, "KIN-001", now.replace(hour=23, minute=59, second=30), "23:59")
        assert not z_due(conn, "KIN-001", now.replace(hour=12, minute=0), "23:59")
        service.journal.run_in_writer(lambda c: close_z(c, service.identity, service.journal.signing_key, None,
                                                        tz=service.tz)).result(10)
        assert not z_due(conn, "KIN-001", now.replace(hour=23, minute=59, second=30), "00:00")
    finally:
        service.close()
