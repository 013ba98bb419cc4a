"""The operations dashboard: server-rendered pages over the cloud's database (docs/operations.md,
"Dashboard"). Every page's data is also JSON from the same handler (`?format=json` or `.json`).

Modules: `access` (tokens and sessions), `auth` (log in and out, CSRF), `render` (HTML or JSON,
headers), one module per page family (`outlets`, `outlet`, `forwarding`, `kpis`), `charts`
(SVG), `templates/` and `static/`.
"""
from __future__ import annotations

from datetime import datetime
from pathlib import Path

import aiohttp_jinja2
import jinja2
from aiohttp import web

from . import auth, forwarding, kpis, outlet, outlets

HERE = Path(__file__).parent
OUTLET = "{outlet_id:[A-Z0-9-]{1,40}}"
JSON = "{ext:(\\.json)?}"


def _ago(moment: str | None, now: str | None) -> str:
    """'5 min ago' for a moment before `now` (both ISO), '—' for none."""
    if not moment or not now:
        return "—"
    return duration((datetime.fromisoformat(now) - datetime.fromisoformat(moment)).total_seconds()) + " ago"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    seconds = abs(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit}" if unit != "min" else f"{seconds // size:.0f} min"
    return f"{seconds:.0f} s"


async def _home(request: web.Request) -> web.StreamResponse:
    raise web.HTTPSeeOther("/dashboard/outlets")


def setup(app: web.Application) -> None:
    """Add the dashboard's routes, templates and stylesheet to the cloud's application."""
    env = aiohttp_jinja2.setup(app, loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True,
                               undefined=jinja2.StrictUndefined)
    env.filters.update(ago=_ago, duration=duration)
    env.globals.update(kpi_charts=kpis.charts)
    r = app.router
    r.add_get("/dashboard", _home)
    r.add_get("/dashboard/", _home)
    r.add_get("/dashboard/login", auth.login_page)
    r.add_post("/dashboard/login", auth.login)
    r.add_post("/dashboard/logout", auth.logout)
    r.add_get(f"/dashboard/outlets{JSON}", outlets.outlets_page)
    r.add_get(f"/dashboard/outlets/{OUTLET}{JSON}", outlet.outlet_page)
    r.add_get(f"/dashboard/outlets/{OUTLET}/ledger{JSON}", outlet.ledger_page)
    r.add_get(f"/dashboard/outlets/{OUTLET}/reports{JSON}", outlet.reports_page)
    r.add_get(f"/dashboard/outlets/{OUTLET}/reports/{{kind:[xa]}}.pdf", outlet.report_pdf_file)
    r.add_get(f"/dashboard/outlets/{OUTLET}/flags/{{flag_id:[0-9]{{1,18}}}}{JSON}", outlet.flag_page)
    r.add_get(f"/dashboard/outlets/{OUTLET}/dgi{JSON}", forwarding.queue_page)
    r.add_post(f"/dashboard/outlets/{OUTLET}/dgi/retry", forwarding.retry_action)
    r.add_post(f"/dashboard/outlets/{OUTLET}/dgi/release", forwarding.release_action)
    r.add_get(f"/dashboard/dgi{JSON}", forwarding.overview_page)
    r.add_get(f"/dashboard/kpis{JSON}", kpis.kpis_page)
    r.add_static("/dashboard/static", HERE / "static", name="dashboard_static", append_version=True)
