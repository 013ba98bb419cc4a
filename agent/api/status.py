"""The outlet's status page: `GET /` on the agent, for the cashier and the technician.

One handler, two forms of the same data: HTML (server-rendered, refreshes itself) or JSON
(`?format=json`, or `Accept: application/json`). Loopback callers only, whatever address the
agent listens on: the page needs no API key, so the network must not reach it. It shows nothing
secret (no API key, token or private key: only what `AgentService.health()` already publishes).

Every value that comes from the journal, the device or the cloud goes through `_e()` (HTML
escaping) before it reaches the page: an invoice name or an error text is data, never markup.
"""
from __future__ import annotations

import html
import ipaddress
import secrets
from datetime import datetime, timezone
from typing import Any

from aiohttp import web

from ..reports import list_reports
from fiscal.runtime.problems import problem

# Seconds between two refreshes of the page (the script fetches the page again and swaps the
# status part in place; without JavaScript a meta refresh reloads it at the same pace).
REFRESH_SECONDS = 5

# What each health colour means for the cashier (docs/sync.md, "Health: what the cashier sees").
HEADLINES = {
    "green": ("Sealing normally", "Nothing to do: sell as usual."),
    "blue": ("Synchronising", "Sell as usual: the agent is sending sealed invoices to the cloud."),
    "amber": ("Offline: sales go on", "Invoices are sealed on this computer with the numbers left below. "
              "Tell the technician if this lasts or the numbers run low."),
    "red": ("Sales must stop", "No signer can seal: every invoice is refused. Do not hand out receipts "
            "by hand; follow the steps below and call the technician."),
}

# The technician's checklist when the outlet is blocked (red).
WHAT_TO_DO_RED = [
    "Stop selling: the till cannot seal invoices now (the POS gets 503 sealing-blocked).",
    "Fiscal device: check it is powered and its cable plugged in; read its alerts below.",
    "Internet: check this computer reaches the cloud (the cloud signer and credential renewal need it).",
    "Credential: `stalela credential status` shows the numbers and time left; "
    "`stalela credential renew` fetches the next block once the cloud answers.",
    "Clock: a clock earlier than the credential's start blocks sealing; set the date and time right.",
    "The page turns green by itself as soon as a signer can seal again: sales may resume then.",
]


# ------------------------------------------------------------------------------ access


def _loopback_ip(text: str | None) -> bool:
    if not text:
        return False
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # ::ffff:127.0.0.1 on a dual-stack socket
    return ip.is_loopback


def _loopback_host(host: str | None) -> bool:
    """The Host header names this machine. A page reached under another name is a browser led
    here by DNS rebinding (a site whose name now resolves to 127.0.0.1): it must not read it."""
    return host is not None and (host.lower() == "localhost" or _loopback_ip(host.strip("[]")))


def refusal(request: web.Request) -> web.Response | None:
    """A 403 problem unless the request comes from this machine, addressed to this machine."""
    if not _loopback_ip(request.remote):
        return problem(403, "Forbidden", "the status page is shown only on the outlet's computer "
                       "(a loopback address), whatever address the agent listens on", "/problems/not-loopback")
    if not _loopback_host(request.url.host):
        return problem(403, "Forbidden", "open the status page as http://127.0.0.1:PORT/ "
                       "(this Host header does not name this computer)", "/problems/not-loopback")
    return None


# ------------------------------------------------------------------------------ the data


def status_view(service) -> dict[str, Any]:
    """Everything the page shows, as plain JSON-able data (the JSON form of the page)."""
    h = service.health()
    state = h["state"]
    headline, meaning = HEADLINES.get(state, ("Unknown", ""))
    device = h.get("device")
    return {
        "state": state,
        "status": h["status"],
        "headline": headline,
        "meaning": meaning,
        "reason": h.get("reason"),
        "outlet": {"id": service.identity.outlet_id, "name": service.identity.outlet_name},
        "mode": h["mode"],
        "signers": h["signers"],
        "device": _device_view(device) if device is not None else None,
        "credential": h["credential"],
        "sync": {**h["sync"], "last_error_at": service.sync_status().get("last_error_at")},
        "clock_skew_seconds": h.get("clock_skew_seconds"),
        "last_z": _last_z(service),
        "what_to_do": WHAT_TO_DO_RED if state == "red" else [],
        "refresh_seconds": REFRESH_SECONDS,
        "generated_at": datetime.now(timezone.utc).isoformat(),
    }


def _device_view(snap: dict[str, Any]) -> dict[str, Any]:
    keep = ("available", "reachable", "mid", "nif", "last_checked", "last_error", "pending_intents",
            "clock", "counters", "dgi_link", "alerts")
    return {k: snap.get(k) for k in keep}


def _last_z(service) -> dict[str, Any] | None:
    rows = list_reports(service.journal.reader, "Z", 1)
    if not rows:
        return None
    z = rows[0]
    net = (z.get("totals") or {}).get("net") or {}
    return {"id": z.get("id"), "number": z.get("number"), "created_at": z.get("created_at"),
            "invoices": (z.get("totals") or {}).get("count"), "net_total": net.get("total"),
            "vat": net.get("vat")}


# ------------------------------------------------------------------------------ the handler


async def status_page(request: web.Request) -> web.Response:
    refused = refusal(request)
    if refused is not None:
        return refused
    fmt = request.query.get("format")
    if fmt not in (None, "html", "json"):
        return problem(400, "Bad query", "format is html or json", "/problems/bad-query")
    from .app import SERVICE

    service = request.app[SERVICE]
    view = status_view(service)
    headers = {"Cache-Control": "no-store"}
    if fmt == "json" or (fmt is None and _wants_json(request)):
        return web.json_response(view, headers=headers)
    nonce = secrets.token_urlsafe(16)
    headers.update({
        # Only this page's own style and script run; it cannot be framed or send data elsewhere.
        "Content-Security-Policy": (f"default-src 'none'; style-src 'nonce-{nonce}'; script-src 'nonce-{nonce}'; "
                                    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"),
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
    })
    return web.Response(text=render_html(view, service.tz, nonce), content_type="text/html",
                        charset="utf-8", headers=headers)


def _wants_json(request: web.Request) -> bool:
    accept = request.headers.get("Accept", "")
    return "application/json" in accept and "text/html" not in accept


# ------------------------------------------------------------------------------ HTML


def _e(value: Any) -> str:
    """Escape for HTML text and attribute values; None shows as a dash."""
    return "—" if value is None else html.escape(str(value), quote=True)


def _when(iso: str | None, tz) -> str:
    """A journal timestamp in the outlet's local time (the stored text when it does not parse)."""
    if not iso:
        return "never"
    try:
        moment = datetime.fromisoformat(iso)
    except (TypeError, ValueError):
        return str(iso)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(tz).strftime("%Y-%m-%d %H:%M:%S") if tz is not None else moment.isoformat()


def _duration(seconds: int | float | None) -> str:
    if seconds is None:
        return "—"
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes = rest // 60
    if days:
        return f"{days} d {hours} h"
    if hours:
        return f"{hours} h {minutes:02d} min"
    return f"{minutes} min"


def _rows(pairs: list[tuple[str, str]]) -> str:
    """A definition list; values are already escaped HTML."""
    return "<dl>" + "".join(f"<dt>{_e(k)}</dt><dd>{v}</dd>" for k, v in pairs) + "</dl>"


def _card(title: str, body: str, card_id: str) -> str:
    return f'<section class="card" id="{card_id}"><h2>{_e(title)}</h2>{body}</section>'


def _alerts(items: list[str]) -> str:
    if not items:
        return '<p class="ok">No alerts.</p>'
    return '<ul class="alerts">' + "".join(f"<li>{_e(a)}</li>" for a in items) + "</ul>"


def _signer_card(view: dict[str, Any], tz) -> str:
    signers = ", ".join(f"{_e(name)}: {_e(state)}" for name, state in (view["signers"] or {}).items())
    dev = view["device"]
    rows = [("Sealing with", f"<strong>{_e(view['mode'] or 'nothing (blocked)')}</strong>"),
            ("Signers", signers or "—")]
    if dev is None:
        return _card("Signer and device", _rows(rows + [("Fiscal device", "not configured")]), "signer")
    rows += [("Fiscal device", "available" if dev["available"] else "<strong>not available</strong>"),
             ("Device id (MID)", _e(dev["mid"])),
             ("Last checked", _e(_when(dev["last_checked"], tz))),
             ("Invoice in flight", _e(dev["pending_intents"]))]
    if dev.get("last_error"):
        rows.append(("Last device error", f'<span class="err">{_e(dev["last_error"])}</span>'))
    return _card("Signer and device", _rows(rows) + "<h3>Device alerts</h3>" + _alerts(dev["alerts"] or []), "signer")


def _block_rows(cred: dict[str, Any], label: str) -> list[tuple[str, str]]:
    return [(label, _e(cred["id"])),
            ("Block", f"{_e(cred['block'][0])} – {_e(cred['block'][1])}"),
            ("Left in this block", _e(cred["remaining"])),
            ("Time left", f'<span id="time-left">{_e(_duration(cred["seconds_left"]))}</span>')]


def _credential_card(view: dict[str, Any]) -> str:
    cred = view["credential"]
    active, ready = cred.get("active"), cred.get("ready") or []
    rows = [("Numbers left", f'<strong class="big" id="numbers-left">{_e(cred["remaining_numbers"])}</strong>')]
    if active:
        rows += _block_rows(active, "Credential")
    elif ready:  # not in use yet: the first offline sale starts it
        rows += _block_rows(ready[0], "Next credential")
    else:
        rows.append(("Credential", "none"))
    rows.append(("Next blocks ready", _e(len(ready))))
    if cred.get("last_renewal_error"):
        rows.append(("Last renewal error", f'<span class="err">{_e(cred["last_renewal_error"])}</span>'))
    return _card("Credential (offline numbers)", _rows(rows), "credential")


def _sync_card(view: dict[str, Any], tz) -> str:
    sync = view["sync"]
    rows = [("Waiting to upload", f'<strong class="big" id="sync-pending">{_e(sync["pending"])}</strong>'),
            ("Oldest waiting since", _e(_when(sync["oldest_pending"], tz) if sync["oldest_pending"] else None)),
            ("Quarantined", _e(sync["quarantined"])),
            ("Last upload", _e(_when(sync["last_success"], tz)))]
    if sync.get("last_error"):
        rows.append(("Last error", f'<span class="err">{_e(sync["last_error"])}</span> '
                                   f'({_e(_when(sync.get("last_error_at"), tz))})'))
    else:
        rows.append(("Last error", "none"))
    return _card("Cloud sync", _rows(rows), "sync")


def _z_card(view: dict[str, Any], tz) -> str:
    z = view["last_z"]
    if z is None:
        return _card("Last Z report", "<p>No Z report yet.</p>", "last-z")
    rows = [("Z number", f"<strong>{_e(z['number'])}</strong>"), ("Closed at", _e(_when(z["created_at"], tz))),
            ("Invoices", _e(z["invoices"])), ("Net total", _e(z["net_total"])), ("VAT", _e(z["vat"]))]
    return _card("Last Z report", _rows(rows), "last-z")


def _with_code(text: str) -> str:
    """Escaped text whose `commands` show as code (our own checklist's text, not the journal's)."""
    parts = _e(text).split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


def _todo_card(view: dict[str, Any]) -> str:
    steps = "".join(f"<li>{_with_code(step)}</li>" for step in view["what_to_do"])
    return _card("What to do now", f"<ol>{steps}</ol>", "what-to-do")


_STYLE = """
:root{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1a1a1a;background:#f3f4f6}
*{box-sizing:border-box}body{margin:0;padding:0 0 2rem;overflow-wrap:anywhere}
header.banner{padding:1rem 1.25rem;color:#fff}
.green header.banner{background:#1b5e20}.blue header.banner{background:#0d47a1}
.amber header.banner{background:#ffb300;color:#1a1a1a}.red header.banner{background:#b71c1c}
.banner .colour{font-size:.85rem;text-transform:uppercase;letter-spacing:.08em;margin:0}
.banner h1{font-size:1.9rem;margin:.2rem 0 .4rem}.banner p{margin:.2rem 0;font-size:1.05rem;max-width:60rem}
.grid{display:grid;gap:1rem;padding:1rem;grid-template-columns:repeat(auto-fit,minmax(min(100%,20rem),1fr))}
.card{background:#fff;border-radius:.5rem;padding:1rem;box-shadow:0 1px 3px rgba(0,0,0,.15);min-width:0}
.card h2{font-size:1.1rem;margin:0 0 .6rem}.card h3{font-size:1rem;margin:.8rem 0 .3rem}
#what-to-do{grid-column:1/-1;border-left:.4rem solid #b71c1c}
dl{display:grid;grid-template-columns:minmax(7rem,auto) 1fr;gap:.3rem .8rem;margin:0}
dt{color:#555}dd{margin:0;overflow-wrap:anywhere}.big{font-size:1.4rem}
.err{color:#b71c1c}.ok{color:#1b5e20;margin:0}ul.alerts{margin:0;padding-left:1.2rem;color:#b71c1c}
li{overflow-wrap:anywhere;margin:.15rem 0}code{background:#eee;padding:0 .2rem;border-radius:.2rem}footer{padding:0 1rem;color:#555;font-size:.85rem}
#stale{margin:1rem;padding:.8rem;background:#fff3cd;border:1px solid #b38600;border-radius:.5rem}
"""

# Fetches the page again every REFRESH_SECONDS and swaps the status part in place (no flicker,
# no scroll jump); when the agent stops answering, says so instead of showing old news as current.
_SCRIPT = """
(function(){
  var every=%d*1000;
  function tick(){
    fetch(location.pathname+location.search,{headers:{Accept:'text/html'},cache:'no-store'})
      .then(function(r){if(!r.ok){throw new Error('HTTP '+r.status);}return r.text();})
      .then(function(text){
        var doc=new DOMParser().parseFromString(text,'text/html');
        var fresh=doc.getElementById('status');
        if(!fresh){throw new Error('no status');}
        document.getElementById('status').replaceWith(document.importNode(fresh,true));
        document.title=doc.title;
        document.getElementById('stale').hidden=true;
      })
      .catch(function(){document.getElementById('stale').hidden=false;})
      .finally(function(){setTimeout(tick,every);});
  }
  setTimeout(tick,every);
})();
"""


def render_html(view: dict[str, Any], tz, nonce: str) -> str:
    state = view["state"]
    reason = f"<p>{_e(view['reason'])}</p>" if view.get("reason") else ""
    cards = [_todo_card(view)] if view["what_to_do"] else []
    cards += [_credential_card(view), _sync_card(view, tz), _signer_card(view, tz), _z_card(view, tz)]
    outlet = view["outlet"]
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width,initial-scale=1">
<title>{_e(state.upper())}: {_e(view['headline'])} · {_e(outlet['id'])}</title>
<noscript><meta http-equiv="refresh" content="{REFRESH_SECONDS}"></noscript>
<style nonce="{nonce}">{_STYLE}</style></head>
<body>
<div id="stale" hidden role="alert">The agent is not answering: what you see below may be out of date.
If this lasts, invoices cannot be sealed: call the technician.</div>
<main id="status" class="{_e(state)}" data-state="{_e(state)}">
<header class="banner"><p class="colour">{_e(state)} · {_e(view['status'])}</p>
<h1 id="headline">{_e(view['headline'])}</h1><p>{_e(view['meaning'])}</p>{reason}</header>
<div class="grid">{''.join(cards)}</div>
<footer>{_e(outlet['name'])} ({_e(outlet['id'])}) · updated {_e(_when(view['generated_at'], tz))}
{_e(tz)} · refreshes every {REFRESH_SECONDS} s</footer>
</main>
<script nonce="{nonce}">{_SCRIPT % REFRESH_SECONDS}</script>
</body></html>
"""
