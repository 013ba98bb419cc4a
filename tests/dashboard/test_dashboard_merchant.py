"""A merchant's read-only view: its own outlets only, through every page in HTML and JSON;
another merchant's outlet is "not found" (as an unknown one), never "forbidden"."""
from __future__ import annotations

import json

from click.testing import CliRunner

from cloud_stub.registry import secret_hash
from dash_support import back_off, gap_outlet, quarantine

OURS, THEIRS = "A1234567B", "B7654321C"
PAGES = ["", "/ledger", "/reports", "/dgi", "/flags/1"]


async def _two_merchants(cloud):
    await gap_outlet(cloud, "KIN-01", OURS)  # flag 1 belongs to KIN-01
    await cloud.outlet("KIN-02", OURS)
    await gap_outlet(cloud, "LUB-09", THEIRS)
    quarantine(cloud.service, "LUB-09")


async def _merchant(cloud, browsers, nif: str = OURS):
    minted = await cloud.post(f"/v1/admin/merchants/{nif}/dashboard-tokens", {"ttl": "30d"}, cloud.admin, 201)
    b = await browsers()
    await b.login(minted["token"])
    return b, minted


async def test_the_operator_issues_a_merchant_token_kept_only_as_its_hash(cloud):
    await cloud.outlet("KIN-01", OURS)
    minted = await cloud.post(f"/v1/admin/merchants/{OURS}/dashboard-tokens", {}, cloud.admin, 201)
    assert minted["token"].startswith("stlm_") and minted["merchant_nif"] == OURS
    with cloud.service.store.read() as tx:
        rows = tx._all("SELECT * FROM merchant_tokens")
    assert [r["token_hash"] for r in rows] == [secret_hash(minted["token"])]
    assert minted["token"] not in json.dumps(rows)
    # Only the admin may, for a merchant that exists, with a sane lifetime.
    agent = await cloud.enroll("KIN-01")
    refused = await cloud.post(f"/v1/admin/merchants/{OURS}/dashboard-tokens", {}, agent.headers, 403)
    assert refused["status"] == 403
    assert (await cloud.post("/v1/admin/merchants/Z0000000Z/dashboard-tokens", {}, cloud.admin, 404))["status"] == 404
    assert (await cloud.post(f"/v1/admin/merchants/{OURS}/dashboard-tokens", {"ttl": "0s"}, cloud.admin, 422))
    with cloud.service.store.read() as tx:
        assert len(tx._all("SELECT * FROM merchant_tokens")) == 1


def test_the_cli_issues_a_merchant_token(tmp_path, database_url, monkeypatch):
    from cloud_stub.cli import cloud as cli

    if database_url:
        monkeypatch.setenv("STALELA_CLOUD_DATABASE_URL", database_url)
    data = str(tmp_path / "cloud")
    assert CliRunner().invoke(cli, ["merchant", "add", "--data", data, "--nif", OURS, "--name", "ABC"]).exit_code == 0
    result = CliRunner().invoke(cli, ["merchant", "token", "--data", data, "--nif", OURS, "--ttl", "7d"])
    assert result.exit_code == 0, result.output
    token = result.stdout.strip()
    assert token.startswith("stlm_") and "expires" in result.stderr
    revoked = CliRunner().invoke(cli, ["merchant", "token", "--data", data, "--nif", OURS, "--revoke-all"])
    assert revoked.exit_code == 0 and "1 dashboard token(s) revoked" in revoked.stdout
    unknown = CliRunner().invoke(cli, ["merchant", "token", "--data", data, "--nif", "Z0000000Z"])
    assert unknown.exit_code == 1 and "no merchant with NIF Z0000000Z" in unknown.output
    assert "Traceback" not in unknown.output


async def test_a_merchant_sees_only_its_own_outlets(cloud, browsers):
    await _two_merchants(cloud)
    b, _ = await _merchant(cloud, browsers)
    html = await b.page("/dashboard/outlets")
    assert 'data-outlet="KIN-01"' in html and 'data-outlet="KIN-02"' in html and "LUB-09" not in html
    assert "read-only" in html
    listing = await b.json("/dashboard/outlets.json")
    assert [o["id"] for o in listing["outlets"]] == ["KIN-01", "KIN-02"] and listing["total"] == 2
    # A search for the other's outlet finds nothing either.
    assert (await b.json("/dashboard/outlets.json?q=LUB"))["outlets"] == []
    # Its own pages work.
    for page in PAGES:
        await b.page("/dashboard/outlets/KIN-01" + page)
    overview = await b.json("/dashboard/dgi.json")
    assert overview["totals"] is None and all(q["outlet_id"] != "LUB-09" for q in overview["queues"])
    kpis = await b.json("/dashboard/kpis.json")
    assert sum(d["invoices"] for d in kpis["series"]) == 2  # KIN-01's two, not LUB-09's


async def test_another_merchants_outlet_is_not_found_exactly_as_an_unknown_one(cloud, browsers):
    await _two_merchants(cloud)
    b, _ = await _merchant(cloud, browsers)
    for page in PAGES:
        theirs = await b.page("/dashboard/outlets/LUB-09" + page, expect=404)
        unknown = await b.page("/dashboard/outlets/NOPE-1" + page, expect=404)
        assert "LUB-09" in theirs and theirs.replace("LUB-09", "X") == unknown.replace("NOPE-1", "X")
        problem = await b.json("/dashboard/outlets/LUB-09" + page + ".json", expect=404)
        assert problem == {**await b.json("/dashboard/outlets/NOPE-1" + page + ".json", expect=404),
                           "detail": problem["detail"]}
        assert problem["detail"] == "no outlet LUB-09"
    await b.json("/dashboard/kpis.json?outlet=LUB-09", expect=404)
    for kind in ("x", "a"):  # nor its reports as PDF
        theirs = await b.page(f"/dashboard/outlets/LUB-09/reports/{kind}.pdf", expect=404)
        assert theirs.replace("LUB-09", "X") == (await b.page(f"/dashboard/outlets/NOPE-1/reports/{kind}.pdf",
                                                              expect=404)).replace("NOPE-1", "X")
    # Its flag number is not reachable through one of our outlets either.
    await b.page("/dashboard/outlets/KIN-01/flags/2", expect=404)


async def test_a_merchant_cannot_act(cloud, browsers):
    await _two_merchants(cloud)
    quarantine(cloud.service, "KIN-01")
    back_off(cloud.service, "KIN-01")
    b, _ = await _merchant(cloud, browsers)
    html = await b.page("/dashboard/outlets/KIN-01/dgi")
    assert 'data-seq="1"' in html  # it sees the quarantined entry...
    assert "/dgi/retry" not in html and "/dgi/release" not in html  # ...and no button to act on it
    csrf = await b.csrf()
    # Its own outlet: forbidden (read-only); the other's: not found.
    resp = await b.post("/dashboard/outlets/KIN-01/dgi/retry", {"csrf": csrf}, expect=403)
    assert "read-only" in await resp.text()
    await b.post("/dashboard/outlets/KIN-01/dgi/release", {"csrf": csrf}, expect=403)
    await b.post("/dashboard/outlets/LUB-09/dgi/release", {"csrf": csrf}, expect=404)
    with cloud.service.store.read() as tx:
        assert tx.dgi_state_counts("LUB-09") == {"quarantined": 1}
        assert tx.dgi_state_counts("KIN-01") == {"quarantined": 1}
        assert tx.dgi_queue("KIN-01")["not_before"] is not None


async def test_a_merchant_session_ends_with_its_token(cloud, browsers):
    await _two_merchants(cloud)
    b, minted = await _merchant(cloud, browsers)
    other, _ = await _merchant(cloud, browsers, THEIRS)
    await b.page("/dashboard/outlets")
    resp = await cloud.client.delete(f"/v1/admin/merchants/{OURS}/dashboard-tokens", headers=cloud.admin)
    assert resp.status == 200 and (await resp.json())["revoked"] == 1
    await b.page("/dashboard/outlets", expect=303)
    await (await browsers()).login(minted["token"], expect=401)
    await other.page("/dashboard/outlets")  # the other merchant's session goes on
    resp = await cloud.client.delete("/v1/admin/merchants/Z0000000Z/dashboard-tokens", headers=cloud.admin)
    assert resp.status == 404
