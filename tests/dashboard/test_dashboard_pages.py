"""The pages' data: HTML and JSON from the same handler agree; keyset paging and filters; the
actions change the database; KPIs drawn as SVG; reports as the API computes them."""
from __future__ import annotations

import re
import shutil
import subprocess
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from fiscal.printing import fmt_amount

from dash_support import back_off, gap_outlet, quarantine


def _rows(html: str, attribute: str) -> list[str]:
    return re.findall(rf'<tr {attribute}="([^"]+)"', html)


async def _operator(cloud, browsers):
    b = await browsers()
    await b.login(cloud.service.admin_token)
    return b


async def test_outlets_html_and_json_hold_the_same_data(cloud, browsers):
    await gap_outlet(cloud, "KIN-01")
    await cloud.outlet("KIN-02")
    b = await _operator(cloud, browsers)
    html = await b.page("/dashboard/outlets")
    data = await b.json("/dashboard/outlets.json")
    assert data == await b.json("/dashboard/outlets?format=json")
    # Each page links to its JSON, filters kept.
    filtered = await b.page("/dashboard/outlets?flagged=1")
    assert 'id="as-json" href="/dashboard/outlets.json?flagged=1"' in filtered
    assert 'rel="alternate" type="application/json" href="/dashboard/outlets.json?flagged=1"' in filtered
    assert _rows(html, "data-outlet") == [o["id"] for o in data["outlets"]] == ["KIN-01", "KIN-02"]
    shown = dict(re.findall(r'data-outlet="([^"]+)" data-open-flags="(\d+)"', html))
    assert shown == {o["id"]: str(o["open_flags"]) for o in data["outlets"]} == {"KIN-01": "1", "KIN-02": "0"}
    kin = data["outlets"][0]
    assert kin["entries"] == 2 and kin["credential"]["state"] == "active"
    assert kin["credential"]["numbers_left"] == kin["credential"]["block_end"] - (kin["credential"]["block_start"] + 2)
    assert kin["credential"]["seconds_left"] == 12 * 3600 and kin["last_seen"] is not None
    assert f'>{kin["credential"]["numbers_left"]}</td>' in html


async def test_outlets_are_paged_by_keyset_and_filtered(cloud, browsers):
    svc = cloud.service
    svc.add_merchant("A1234567B", "ABC")
    ids = [f"OUT-{n:03d}" for n in range(1, 121)]
    for outlet_id in ids:
        svc.add_outlet(outlet_id, "A1234567B", f"Shop {outlet_id[-3:]}")
    await gap_outlet(cloud, "OUT-200")  # the one with a flag, last in id order
    b = await _operator(cloud, browsers)
    seen, url = [], "/dashboard/outlets.json"
    while url:
        page = await b.json(url)
        assert page["total"] == 121 and len(page["outlets"]) <= 50
        seen += [o["id"] for o in page["outlets"]]
        url = page["next_after"] and f"/dashboard/outlets.json?after={page['next_after']}"
    assert seen == ids + ["OUT-200"]
    # Backwards from the last page, and the HTML's links carry the cursors.
    last = await b.json("/dashboard/outlets.json?after=OUT-100")
    back = await b.json(f"/dashboard/outlets.json?before={last['outlets'][0]['id']}")
    assert [o["id"] for o in back["outlets"]] == ids[50:100] and back["prev_before"] == "OUT-051"
    html = await b.page("/dashboard/outlets?after=OUT-050")
    assert 'href="/dashboard/outlets?after=OUT-100"' in html and 'href="/dashboard/outlets?before=OUT-051"' in html
    # Filters: open flags, and a search on id or name (case-insensitive, wildcards taken literally).
    flagged = await b.json("/dashboard/outlets.json?flagged=1")
    assert [o["id"] for o in flagged["outlets"]] == ["OUT-200"] and flagged["total"] == 1
    assert _rows(await b.page("/dashboard/outlets?flagged=1"), "data-outlet") == ["OUT-200"]
    found = await b.json("/dashboard/outlets.json?q=shop%2011")
    assert [o["id"] for o in found["outlets"]] == [f"OUT-11{k}" for k in range(10)]  # "Shop 110".."Shop 119"
    assert (await b.json("/dashboard/outlets.json?q=%25"))["outlets"] == []
    assert (await b.json("/dashboard/outlets.json?q=out-12"))["total"] == 1
    problem = await b.json("/dashboard/outlets.json?after=x%27%3B", expect=422)
    assert "outlet id" in problem["detail"]


async def test_the_ledger_is_paged_by_keyset_and_filtered(cloud, browsers):
    agent, cred = await gap_outlet(cloud)
    invoices = [agent.seal(cred, n) for n in range(cred.block_start + 3, cred.block_start + 123)]
    assert (await cloud.reconcile(agent, invoices))["accepted"] == 120
    b = await _operator(cloud, browsers)
    first = await b.json("/dashboard/outlets/KIN-01/ledger.json")
    assert [e["seq"] for e in first["entries"]] == list(range(122, 72, -1))  # newest first
    assert first["newer_after"] is None and first["older_before"] == 73
    html = await b.page("/dashboard/outlets/KIN-01/ledger")
    assert [int(s) for s in _rows(html, "data-seq")] == [e["seq"] for e in first["entries"]]
    assert 'href="?before=73"' in html
    seqs, url = [], "/dashboard/outlets/KIN-01/ledger.json"
    while url:
        page = await b.json(url)
        seqs += [e["seq"] for e in page["entries"]]
        url = page["older_before"] and f"/dashboard/outlets/KIN-01/ledger.json?before={page['older_before']}"
    assert seqs == list(range(122, 0, -1))
    newer = await b.json("/dashboard/outlets/KIN-01/ledger.json?after=10")
    assert [e["seq"] for e in newer["entries"]] == list(range(60, 10, -1)) and newer["newer_after"] == 60
    entry = first["entries"][0]
    assert entry["authority_id"] == cred.id and entry["type"] == "FV" and entry["state"] == "verified"
    assert entry["total"] == invoices[-1]["totals"]["total"] and entry["invoice_id"] == invoices[-1]["id"]
    # Filters: none of another type, all of this credential's, the period in the outlet's days.
    assert (await b.json("/dashboard/outlets/KIN-01/ledger.json?type=FA"))["entries"] == []
    by_authority = await b.json(f"/dashboard/outlets/KIN-01/ledger.json?authority={cred.id}&mode=delegated")
    assert len(by_authority["entries"]) == 50 and by_authority["filters"]["authority"] == cred.id
    assert (await b.json("/dashboard/outlets/KIN-01/ledger.json?from=2001-01-01&to=2001-01-31"))["entries"] == []
    for bad in ("type=XX", "before=-1", "mode=paper", "from=yesterday"):
        assert (await b.json(f"/dashboard/outlets/KIN-01/ledger.json?{bad}", expect=422))["status"] == 422
        assert "Invalid request" in await b.page(f"/dashboard/outlets/KIN-01/ledger?{bad}", expect=422)


async def test_the_outlet_page_shows_its_flag_rejection_credential_and_device(cloud, browsers):
    agent, cred = await gap_outlet(cloud)
    bad = agent.seal(cred, cred.block_start + 3)
    bad["totals"]["total"] = "1.00"  # the content no longer matches its hash: rejected
    assert (await cloud.reconcile(agent, [bad]))["rejected"] == 1
    await cloud.post("/v1/admin/outlets/KIN-01/devices", {"mid": "MCF-1", "nif": "A1234567B"}, cloud.admin, 201)
    b = await _operator(cloud, browsers)
    data = await b.json("/dashboard/outlets/KIN-01.json")
    html = await b.page("/dashboard/outlets/KIN-01")
    assert [f["reason"] for f in data["flags"]] == ["gap"] and 'data-reason="gap"' in html
    assert [r["reason"] for r in data["rejections"]] == ["hash_mismatch"]
    assert 'data-reason="hash_mismatch"' in html and data["rejections"][0]["detail"] in html
    assert [c["id"] for c in data["credentials"]] == [cred.id] and cred.id in html
    assert [d["mid"] for d in data["devices"]] == ["MCF-1"] and "MCF-1" in html
    assert [e["seq"] for e in data["recent"]] == [2, 1]
    flag = await b.json(f"/dashboard/outlets/KIN-01/flags/{data['flags'][0]['id']}.json")
    assert flag["flag"]["numbers"] == [[cred.block_start + 1, cred.block_start + 1]]
    assert flag["credential"]["id"] == cred.id and "never reconciled" in flag["flag"]["detail"]
    flag_html = await b.page(f"/dashboard/outlets/KIN-01/flags/{data['flags'][0]['id']}")
    assert flag["flag"]["detail"] in flag_html and f"authority={cred.id}" in flag_html
    await b.page("/dashboard/outlets/KIN-01/flags/999", expect=404)


def outlet_day(cloud) -> str:
    """Today in KIN-01's zone (UTC+1), as the reports read their period: at 23:30 UTC it is
    already tomorrow there."""
    return cloud.clock.now.astimezone(ZoneInfo("Africa/Kinshasa")).date().isoformat()


@pytest.mark.clock_edges
async def test_reports_are_the_apis_figures(cloud, browsers):
    await gap_outlet(cloud)
    b = await _operator(cloud, browsers)
    day = outlet_day(cloud)
    data = await b.json(f"/dashboard/outlets/KIN-01/reports.json?from={day}&to={day}")
    api = await cloud.get(f"/v1/outlets/KIN-01/reports/x?from={day}&to={day}", cloud.admin)
    assert data["x"] == api and data["x"]["totals"]["count"] == 2
    assert len(data["a"]["lines"]) == 2 and data["a"]["truncated"] is False
    html = await b.page(f"/dashboard/outlets/KIN-01/reports?from={day}&to={day}")
    assert f'id="x-count">2<' in html and f'id="x-net">{api["totals"]["net"]["total"]}<' in html


@pytest.mark.skipif(shutil.which("pdftotext") is None,
                    reason="pdftotext (Debian poppler-utils) is not installed here; .ci/run installs it")
@pytest.mark.clock_edges
async def test_reports_print_as_pdf_with_the_same_figures(cloud, browsers, tmp_path):
    await gap_outlet(cloud)
    b = await _operator(cloud, browsers)
    day = outlet_day(cloud)
    html = await b.page(f"/dashboard/outlets/KIN-01/reports?from={day}&to={day}")
    href = re.search(r'id="x-pdf" href="([^"]+)"', html).group(1).replace("&amp;", "&")
    assert href == f"/dashboard/outlets/KIN-01/reports/x.pdf?from={day}&to={day}"
    api = await cloud.get(f"/v1/outlets/KIN-01/reports/x?from={day}&to={day}", cloud.admin)
    texts = {}
    for kind in ("x", "a"):
        resp = await b.client.get(f"/dashboard/outlets/KIN-01/reports/{kind}.pdf?from={day}&to={day}")
        assert resp.status == 200 and resp.content_type == "application/pdf"
        assert f'KIN-01-{kind.upper()}-{day}' in resp.headers["Content-Disposition"]
        (tmp_path / f"{kind}.pdf").write_bytes(await resp.read())
        texts[kind] = subprocess.run(["pdftotext", "-layout", str(tmp_path / f"{kind}.pdf"), "-"],
                                     check=True, capture_output=True, text=True).stdout
    assert "RAPPORT X (registre du cloud)" in texts["x"] and "A1234567B" in texts["x"]
    net = re.search(r"NET \(ventes - avoirs\).*?TOTAL TTC\s+(\S+)", texts["x"], re.S).group(1)
    assert net == fmt_amount(api["totals"]["net"]["total"])
    assert "RAPPORT A (articles) KIN-01" in texts["a"] and "Lignes: 2" in texts["a"]
    # Logged out: to the login page, never the file.
    anonymous = await browsers()
    resp = await anonymous.client.get("/dashboard/outlets/KIN-01/reports/x.pdf", allow_redirects=False)
    assert resp.status == 303 and resp.headers["Location"].startswith("/dashboard/login?next=")
    await b.page("/dashboard/outlets/KIN-01/reports/x.pdf?from=2026-13-01", expect=422)


async def test_release_and_retry_change_the_forwarding_queue(cloud, browsers):
    await gap_outlet(cloud)
    seq = quarantine(cloud.service, "KIN-01")
    back_off(cloud.service, "KIN-01", 3600)
    b = await _operator(cloud, browsers)
    overview = await b.json("/dashboard/dgi.json")
    assert [(q["outlet_id"], q["failures"], q["quarantined"]) for q in overview["queues"]] == [("KIN-01", 1, 1)]
    status = await b.json("/dashboard/outlets/KIN-01/dgi.json")
    assert status["state"] == "quarantined" and [q["seq"] for q in status["quarantined"]] == [seq]
    html = await b.page("/dashboard/outlets/KIN-01/dgi")
    csrf = re.search(r'name="csrf" value="([^"]+)"', html).group(1)
    assert f'id="release-{seq}"' in html and 'id="retry"' in html

    resp = await b.post("/dashboard/outlets/KIN-01/dgi/retry", {"csrf": csrf})
    assert resp.headers["Location"] == "/dashboard/outlets/KIN-01/dgi?done=retry"
    with cloud.service.store.read() as tx:
        queue = tx.dgi_queue("KIN-01")
    assert queue["not_before"] is None and queue["failures"] == 1  # tried at once; its history stays

    resp = await b.post("/dashboard/outlets/KIN-01/dgi/release", {"csrf": csrf, "seq": str(seq)})
    assert resp.headers["Location"] == "/dashboard/outlets/KIN-01/dgi?done=released-1"
    with cloud.service.store.read() as tx:
        assert tx.dgi_submission("KIN-01", seq)["state"] == "released"
        events = tx._all("SELECT kind, actor FROM dgi_events WHERE outlet_id = ? ORDER BY id", "KIN-01")
    assert events[-1] == {"kind": "released", "actor": "operator (dashboard)"}
    # Nothing left to release: a clear 404 page; a bad seq: 422; nothing changed.
    resp = await b.post("/dashboard/outlets/KIN-01/dgi/release", {"csrf": csrf, "seq": str(seq)}, expect=404)
    assert "is not quarantined" in await resp.text()
    await b.post("/dashboard/outlets/KIN-01/dgi/release", {"csrf": csrf, "seq": "x"}, expect=422)
    await b.post("/dashboard/outlets/NOPE-1/dgi/release", {"csrf": csrf}, expect=404)
    assert (await b.json("/dashboard/dgi.json"))["queues"] == []


async def test_kpis_are_drawn_as_svg_with_the_same_figures_as_json(cloud, browsers):
    cloud.clock.now = datetime(2026, 3, 1, 20, 0, tzinfo=timezone.utc)
    await cloud.outlet("KIN-01")
    agent = await cloud.enroll("KIN-01")
    cred = await cloud.credential(agent)
    first = [agent.seal(cred, cred.block_start, when=cloud.clock.now),
             agent.seal(cred, cred.block_start + 2, when=cloud.clock.now)]  # a gap: one flag on 03-01
    assert (await cloud.reconcile(agent, first))["accepted"] == 2
    cloud.clock.advance(hours=5)  # 01:00 on 03-02; this one sealed 30 s before it reaches the cloud
    late = agent.seal(cred, cred.block_start + 3, when=cloud.clock.now - timedelta(seconds=30))
    assert (await cloud.reconcile(agent, [late]))["accepted"] == 1
    b = await _operator(cloud, browsers)
    data = await b.json("/dashboard/kpis.json?days=7")
    assert [d["day"] for d in data["series"][-2:]] == ["2026-03-01", "2026-03-02"] and len(data["series"]) == 7
    assert [(d["invoices"], d["flags"], d["rejections"]) for d in data["series"][-2:]] == [(2, 1, 0), (1, 0, 0)]
    assert data["series"][-1]["net_sales"] == float(late["totals"]["total"])
    assert data["series"][-1]["sync_lag_max_s"] == 30 and data["series"][-2]["sync_lag_max_s"] == 0
    html = await b.page("/dashboard/kpis?days=7")
    assert html.count("<svg") == 4 and "<script" not in html
    assert "2026-03-02 invoices: 1</title>" in html and "2026-03-01 invoices: 2</title>" in html
    one = await b.json("/dashboard/kpis.json?days=7&outlet=KIN-01")
    assert one["series"] == data["series"]
    await b.json("/dashboard/kpis.json?days=0", expect=422)
