"""The status page in a real browser (Debian's chromium driven by Playwright) against the real
daemon: colour and numbers shown, refreshed by the page itself, no secret, no sideways scroll on
a phone. Screenshots go to the test's folder, and to $STALELA_SCREENSHOTS_DIR when set
(`STALELA_SCREENSHOTS_DIR=docs/screenshots ./dev test tests/browser` refreshes the README's)."""
from __future__ import annotations

import os
import shutil
import struct
from dataclasses import replace
from pathlib import Path

import pytest

from agent.identity import OutletIdentity
from tests.support import invoice

playwright_api = pytest.importorskip("playwright.sync_api", reason="pip install -e '.[test]' installs playwright")
expect = playwright_api.expect

# Debian's chromium: Playwright's own browser download does not work here (and is not wanted).
CHROMIUM = Path("/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 900}
# The page refreshes every 5 s (agent/api/status.py); three refreshes' worth before giving up.
WAIT_MS = 15_000


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.fail("the browser tests drive Debian's chromium: apt-get install chromium "
                    "(./dev test and .ci/run install it when they can)")
    with playwright_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS, headless=True)
        yield b
        b.close()


@pytest.fixture
def agent(harness):
    harness.add_credential(harness.credential(1001, 1500))
    harness.start()
    return harness


def _open(browser, agent, viewport):
    page = browser.new_page(viewport=viewport)
    page.goto(agent.url + "/")
    return page


def _no_sideways_scroll(page) -> None:
    overflow = page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
    assert overflow <= 0, f"the page is {overflow}px wider than the screen"


def _png_width(path: Path) -> int:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">I", data[16:20])[0]


def _screenshot(page, tmp_path: Path, name: str, width: int) -> None:
    path = tmp_path / name
    page.screenshot(path=str(path), full_page=True)
    assert _png_width(path) == width
    target = os.environ.get("STALELA_SCREENSHOTS_DIR")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, Path(target) / name)


def test_page_shows_state_and_refreshes_itself_after_a_seal(browser, agent, tmp_path):
    page = _open(browser, agent, PHONE)
    state = agent.get("/v1/health")[1]["state"]
    expect(page.locator("#status")).to_have_attribute("data-state", state)
    expect(page.locator("#numbers-left")).to_have_text("500")
    expect(page.locator("#headline")).to_have_text("Offline: sales go on")
    page.evaluate("window.__sameDocument = true")  # gone if the page were reloaded

    assert agent.post("/v1/invoices", invoice("R-1"))[0] == 201
    # No reload by the test: the page fetches itself again and shows the new numbers.
    expect(page.locator("#numbers-left")).to_have_text("499", timeout=WAIT_MS)
    expect(page.locator("#sync-pending")).to_have_text("1")
    assert page.evaluate("window.__sameDocument") is True
    _no_sideways_scroll(page)
    page.close()


def test_no_secret_in_the_page(browser, agent):
    agent.post("/v1/invoices", invoice("R-1"))
    page = _open(browser, agent, DESKTOP)
    expect(page.locator("#numbers-left")).to_have_text("499")
    html = page.content()
    token = (agent.data_dir / "keys" / "cloud.token").read_text().strip()
    assert agent.api_key not in html and token not in html
    page.close()


def test_layout_and_screenshots_at_phone_and_desktop_widths(browser, harness, tmp_path):
    # A long unbroken outlet name: the worst case for a narrow screen.
    path = harness.data_dir / "enrollment.json"
    replace(OutletIdentity.load(path), outlet_name="SUPERMARCHEDUBOULEVARDDU30JUIN_GOMBE_KINSHASA_AVENUE_DE_LA_NATION").save(path)
    harness.add_credential(harness.credential(1001, 1500))
    harness.start()
    for n in range(3):
        harness.post("/v1/invoices", invoice(f"R-{n}"))
    assert harness.post("/v1/reports/z")[0] == 201
    harness.post("/v1/invoices", invoice("R-after-z"))
    for viewport, name in ((PHONE, "status-390.png"), (DESKTOP, "status-1280.png")):
        page = _open(browser, harness, viewport)
        expect(page.locator("#numbers-left")).to_have_text("496")
        expect(page.locator("#last-z")).to_contain_text("Z number")
        _no_sideways_scroll(page)
        _screenshot(page, tmp_path, name, viewport["width"])
        page.close()


def test_red_page_on_a_phone(browser, harness, tmp_path):
    harness.add_credential(harness.credential(1001, 1001))  # used up by the first sale
    harness.start()
    harness.post("/v1/invoices", invoice("R-1"))
    page = _open(browser, harness, PHONE)
    expect(page.locator("#status")).to_have_attribute("data-state", "red")
    expect(page.locator("#headline")).to_have_text("Sales must stop")
    expect(page.locator("#what-to-do li")).to_have_count(6)
    _no_sideways_scroll(page)
    _screenshot(page, tmp_path, "status-red-390.png", PHONE["width"])
    page.close()


def test_page_says_so_when_the_agent_stops_answering(browser, agent):
    page = _open(browser, agent, PHONE)
    expect(page.locator("#stale")).to_be_hidden()
    agent.stop()
    expect(page.locator("#stale")).to_be_visible(timeout=WAIT_MS)
    page.close()
