"""The cloud's dashboard in a real browser (Debian's chromium driven by Playwright) against a
real `stalela cloud serve` process: an operator finds a gap, releases a quarantined entry and
retries a failing queue; a merchant sees its own outlets only; a phone gets no sideways scroll.
One browser and one cloud for the module; each test has its own browser context (cookies)."""
from __future__ import annotations

import json

import pytest

from tests.support import CloudProcess

from tests.browser.dashboard_demo import populate

playwright_api = pytest.importorskip("playwright.sync_api", reason="pip install -e '.[test]' installs playwright")
expect = playwright_api.expect

from tests.browser.test_status_browser import DESKTOP, PHONE, _no_sideways_scroll, browser  # noqa: E402,F401  (one setup)


@pytest.fixture(scope="module")
def cloud(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dashboard")
    demo = populate(folder / "cloud")
    process = CloudProcess(folder / "cloud")
    process.start(30, "--workers", "0")
    process.demo = demo
    yield process
    process.stop()


def _logged_in(browser, cloud, token: str, viewport=DESKTOP):
    context = browser.new_context(viewport=viewport)
    page = context.new_page()
    page.goto(cloud.url + "/dashboard/outlets")
    expect(page).to_have_url(cloud.url + "/dashboard/login?next=/dashboard/outlets")
    page.fill("#token", token)
    page.click("#login")
    expect(page.locator("#outlets")).to_be_visible()
    return context, page


def test_an_operator_finds_the_outlet_with_a_gap_and_opens_its_flag(browser, cloud):
    context, page = _logged_in(browser, cloud, cloud.admin_token())
    expect(page.locator("#role")).to_have_text("operator")
    page.check("#flagged")
    page.click("#filter")
    rows = page.locator("#outlets tbody tr")
    expect(rows).to_have_count(1)
    expect(rows.first).to_have_attribute("data-outlet", cloud.demo.gap_outlet)
    rows.first.locator("a.flagged").click()
    flag_row = page.locator('#flag-table tr[data-reason="gap"]')
    expect(flag_row).to_have_count(1)
    flag_row.locator("a").first.click()
    expect(page.locator("#flag-reason")).to_have_text("gap")
    expect(page.locator("#flag-detail")).to_contain_text("never reconciled")
    expect(page.locator("#flag-credential")).to_contain_text("DC-")
    page.click("#flag-ledger")
    expect(page.locator("#ledger tbody tr").first).to_be_visible()
    context.close()


def test_an_operator_releases_a_quarantined_entry_and_retries_a_failing_queue(browser, cloud):
    context, page = _logged_in(browser, cloud, cloud.admin_token())
    page.click("text=DGI forwarding")
    expect(page.locator("#dgi-queues tbody tr")).to_have_count(2)
    outlet, seq = cloud.demo.quarantined_outlet, cloud.demo.quarantined_seq
    page.click(f'#dgi-queues a:text("{outlet}")')
    expect(page.locator("#dgi-state")).to_have_text("quarantined")
    page.click(f"#release-{seq}")
    expect(page).to_have_url(cloud.url + f"/dashboard/outlets/{outlet}/dgi?done=released-1")
    expect(page.locator("#quarantined")).to_contain_text("Nothing quarantined")
    expect(page.locator("#dgi-released")).to_have_text("1")
    # The failing queue: its next attempt is an hour away until the operator says now.
    page.goto(cloud.url + "/dashboard/dgi")
    expect(page.locator("#dgi-queues tbody tr")).to_have_count(1)
    page.click('#dgi-queues a:text("KIN-04")')
    expect(page.locator("#dgi-state")).to_have_text("failing")
    page.click("#retry")
    expect(page.locator("#dgi-not-before")).to_have_text("now")
    expect(page.locator("#retry")).to_have_count(0)
    # What the database now says, through the API.
    status = cloud.get(f"/v1/outlets/{outlet}/dgi", cloud.admin_token())
    assert status["quarantined"] == [] and status["counts"].get("released") == 1
    context.close()


def test_a_merchant_cannot_see_another_merchants_outlet(browser, cloud):
    context, page = _logged_in(browser, cloud, cloud.demo.merchant_token)
    expect(page.locator("#role")).to_contain_text("read-only")
    ids = page.locator("#outlets tbody tr").evaluate_all("rows => rows.map(r => r.dataset.outlet)")
    assert ids and cloud.demo.theirs not in ids and all(i.startswith("KIN-") for i in ids)
    response = page.goto(cloud.url + f"/dashboard/outlets/{cloud.demo.theirs}")
    assert response.status == 404
    expect(page.locator("#error")).to_have_text(f"no outlet {cloud.demo.theirs}")
    response = page.goto(cloud.url + f"/dashboard/outlets/{cloud.demo.theirs}/dgi.json")
    assert response.status == 404 and json.loads(page.locator("body").inner_text())["status"] == 404
    # Its own outlet opens, with no action to take.
    page.goto(cloud.url + f"/dashboard/outlets/{cloud.demo.quarantined_outlet}/dgi")
    expect(page.locator("#dgi-state")).to_be_visible()
    expect(page.locator("button.release, #retry")).to_have_count(0)
    page.click("#logout")
    expect(page.locator("#token")).to_be_visible()
    context.close()


def test_pages_fit_a_phone_without_sideways_scroll(browser, cloud):
    context, page = _logged_in(browser, cloud, cloud.admin_token(), PHONE)
    _no_sideways_scroll(page)
    for path in ("/dashboard/outlets/KIN-01", "/dashboard/outlets/KIN-01/ledger",
                 f"/dashboard/outlets/{cloud.demo.quarantined_outlet}/dgi", "/dashboard/kpis"):
        page.goto(cloud.url + path)
        _no_sideways_scroll(page)
    charts = page.locator("svg.chart")
    expect(charts).to_have_count(4)
    assert charts.first.bounding_box()["width"] <= PHONE["width"]
    context.close()
