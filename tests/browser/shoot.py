"""Screenshots of the cloud's dashboard for the README: the demo data (dashboard_demo.py) served
by a real `stalela cloud serve`, photographed by Debian's chromium at 1280 px (and the outlets
page at 390 px).

    python -m tests.browser.shoot               # writes docs/screenshots/dashboard-*.png
    python -m tests.browser.shoot --out /tmp/x
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from playwright.sync_api import sync_playwright

from tests.browser.dashboard_demo import populate
from tests.browser.test_status_browser import CHROMIUM, DESKTOP, FLAGS, PHONE
from tests.support import ROOT, CloudProcess

PAGES = [  # (file, path, viewport)
    ("dashboard-outlets.png", "/dashboard/outlets", DESKTOP),
    ("dashboard-outlets-390.png", "/dashboard/outlets", PHONE),
    ("dashboard-outlet.png", "/dashboard/outlets/KIN-02", DESKTOP),
    ("dashboard-flag.png", "/dashboard/outlets/KIN-02/flags/1", DESKTOP),
    ("dashboard-forwarding.png", "/dashboard/outlets/KIN-03/dgi", DESKTOP),
    ("dashboard-kpis.png", "/dashboard/kpis?days=14", DESKTOP),
]


def shoot(out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    with tempfile.TemporaryDirectory() as folder:
        populate(Path(folder) / "cloud")
        cloud = CloudProcess(Path(folder) / "cloud")
        cloud.start(30, "--workers", "0")
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS, headless=True)
                for name, path, viewport in PAGES:
                    context = browser.new_context(viewport=viewport)
                    page = context.new_page()
                    page.goto(cloud.url + "/dashboard/login?next=" + path.replace("?", "%3F"))
                    page.fill("#token", cloud.admin_token())
                    page.click("#login")
                    page.wait_for_load_state()
                    page.screenshot(path=str(out / name), full_page=True)
                    written.append(out / name)
                    context.close()
                browser.close()
        finally:
            cloud.stop()
    return written


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m tests.browser.shoot")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots")
    for path in shoot(ap.parse_args().out):
        print(path)


if __name__ == "__main__":
    main()
