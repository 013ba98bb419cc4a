"""Logging in and out of the dashboard, sessions that end, and CSRF on every action: real HTTP
to a real cloud, on SQLite or PostgreSQL (STALELA_TEST_CLOUD_DB)."""
from __future__ import annotations

from http.cookies import SimpleCookie

from yarl import URL

from dash_support import back_off, field, gap_outlet


def _cookie(resp, name: str):
    for header in resp.headers.getall("Set-Cookie", []):
        cookie = SimpleCookie(header)
        if name in cookie:
            return cookie[name], header
    raise AssertionError(f"no {name} cookie set")


async def test_operator_logs_in_with_the_admin_token_and_gets_a_strict_http_only_cookie(cloud, browsers):
    b = await browsers()
    resp = await b.login(cloud.service.admin_token)
    assert resp.headers["Location"] == "/dashboard/outlets"
    morsel, header = _cookie(resp, "stalela_session")
    assert morsel["httponly"] and morsel["samesite"] == "Strict" and morsel["path"] == "/dashboard"
    assert "Secure" not in header  # plain HTTP on loopback, not configured behind TLS
    assert cloud.service.admin_token not in header
    html = await b.page("/dashboard/outlets")
    assert 'id="role">operator' in html
    # The pages forbid framing and scripts.
    resp = await b.client.get("/dashboard/outlets")
    assert "frame-ancestors 'none'" in resp.headers["Content-Security-Policy"]
    assert resp.headers["X-Frame-Options"] == "DENY"


async def test_secure_cookie_when_configured(cloud, browsers):
    b = await browsers()
    form = {"login_csrf": field(await b.page("/dashboard/login"), "login_csrf"), "token": cloud.service.admin_token}
    cloud.service.config.secure_cookies = True  # `serve --secure-cookies`, behind a TLS proxy
    resp = await b.post("/dashboard/login", form)
    assert "Secure" in _cookie(resp, "stalela_session")[1]
    # A browser sends a Secure cookie over HTTPS only: this plain-HTTP client has no session.
    await b.page("/dashboard/outlets", expect=303)


async def test_a_wrong_token_is_refused_with_one_clear_message_and_no_session(cloud, browsers):
    await cloud.outlet("KIN-01", "A1234567B")
    b = await browsers()
    for wrong in ("nope", cloud.service.admin_token + "x", "stlm_" + "A" * 43, "é"):
        resp = await b.login(wrong, expect=401)
        html = await resp.text()
        assert "That token was not accepted." in html
        assert "stalela_session" not in resp.headers.get("Set-Cookie", "")
    await b.page("/dashboard/outlets", expect=303)
    # The same answer whatever was wrong: no hint whether a merchant token exists or expired.
    minted = await cloud.post("/v1/admin/merchants/A1234567B/dashboard-tokens", {"ttl": "1h"}, cloud.admin, 201)
    cloud.clock.advance(hours=2)
    expired = await (await b.login(minted["token"], expect=401)).text()
    assert "That token was not accepted." in expired


async def test_the_login_form_needs_its_own_token(cloud, browsers):
    b = await browsers()
    resp = await b.client.post("/dashboard/login", data={"token": cloud.service.admin_token, "login_csrf": "forged"},
                               allow_redirects=False)
    assert resp.status == 403
    assert "stalela_session" not in resp.headers.get("Set-Cookie", "")


async def test_pages_need_a_session_html_redirects_json_is_401(cloud, browsers):
    b = await browsers()
    resp = await b.client.get("/dashboard/outlets/KIN-01/ledger?type=FV", allow_redirects=False)
    assert resp.status == 303
    location = URL(resp.headers["Location"])
    assert location.path == "/dashboard/login" and location.query["next"] == "/dashboard/outlets/KIN-01/ledger?type=FV"
    problem = await b.json("/dashboard/outlets.json", expect=401)
    assert problem["status"] == 401 and "log in" in problem["detail"]
    # An admin bearer token is not a dashboard session.
    resp = await b.client.get("/dashboard/outlets.json", headers=cloud.admin, allow_redirects=False)
    assert resp.status == 401


async def test_login_goes_back_to_the_page_asked_for_but_never_to_another_site(cloud, browsers):
    b = await browsers()
    resp = await b.login(cloud.service.admin_token, next_="%2Fdashboard%2Fkpis%3Fdays%3D7")
    assert resp.headers["Location"] == "/dashboard/kpis?days=7"
    # A mistyped token first: the page asked for is still where the form goes.
    again = await browsers()
    refused = await (await again.login("typo", expect=401, next_="%2Fdashboard%2Fdgi")).text()
    assert field(refused, "next") == "/dashboard/dgi"
    for target in ("https%3A%2F%2Fevil.example%2F", "%2F%2Fevil.example", "%2Fdashboard%5C..%5Cevil"):
        resp = await (await browsers()).login(cloud.service.admin_token, next_=target)
        assert resp.headers["Location"] == "/dashboard/outlets"


async def test_logout_ends_the_session_for_every_copy_of_the_cookie(cloud, browsers):
    b = await browsers()
    await b.login(cloud.service.admin_token)
    stolen = {c.key: c.value for c in b.client.session.cookie_jar}
    csrf = await b.csrf()
    resp = await b.post("/dashboard/logout", {"csrf": csrf})
    assert resp.headers["Location"] == "/dashboard/login"
    await b.page("/dashboard/outlets", expect=303)
    # The cookie's value, kept by someone else, opens nothing either: the session is gone from the database.
    other = await browsers()
    other.client.session.cookie_jar.update_cookies(stolen)
    await other.page("/dashboard/outlets", expect=303)
    with cloud.service.store.read() as tx:
        assert tx._one("SELECT COUNT(*) AS n FROM dashboard_sessions")["n"] == 0


async def test_a_session_ends_when_it_expires(cloud, browsers):
    b = await browsers()
    await b.login(cloud.service.admin_token)
    await b.page("/dashboard/outlets")
    cloud.clock.advance(minutes=59)
    await b.page("/dashboard/outlets")
    cloud.clock.advance(minutes=2)  # past the hour the test's configuration gives a session
    await b.page("/dashboard/outlets", expect=303)
    await b.json("/dashboard/outlets.json", expect=401)
    # Expired sessions are removed as new ones are made.
    await b.login(cloud.service.admin_token)
    with cloud.service.store.read() as tx:
        assert tx._one("SELECT COUNT(*) AS n FROM dashboard_sessions")["n"] == 1


async def test_actions_without_the_page_token_are_refused_and_change_nothing(cloud, browsers):
    await gap_outlet(cloud)
    back_off(cloud.service, "KIN-01")
    b = await browsers()
    await b.login(cloud.service.admin_token)
    csrf = await b.csrf("/dashboard/outlets/KIN-01/dgi")
    for form in ({}, {"csrf": "0" * 64}, {"csrf": csrf[:-1]}):
        resp = await b.post("/dashboard/outlets/KIN-01/dgi/retry", form, expect=403)
        assert "The form expired" in await resp.text()
    with cloud.service.store.read() as tx:
        assert tx.dgi_queue("KIN-01")["not_before"] is not None
    # Another operator's page token is not this session's.
    other = await browsers()
    await other.login(cloud.service.admin_token)
    await b.post("/dashboard/outlets/KIN-01/dgi/retry", {"csrf": await other.csrf()}, expect=403)
    # And logging out needs it too (no other site can log an operator out).
    await b.post("/dashboard/logout", {}, expect=403)
    await b.page("/dashboard/outlets")
    # With the token, the action goes through.
    await b.post("/dashboard/outlets/KIN-01/dgi/retry", {"csrf": csrf})
    with cloud.service.store.read() as tx:
        assert tx.dgi_queue("KIN-01")["not_before"] is None


async def test_the_login_page_shows_no_secret(cloud, browsers):
    html = await (await browsers()).page("/dashboard/login")
    assert cloud.service.admin_token not in html
    assert field(html, "login_csrf")


async def test_the_request_log_names_the_viewer_and_refused_logins_never_a_secret(cloud, browsers, caplog):
    caplog.set_level("INFO", logger="stalela.cloud")
    b = await browsers()
    await b.login("not-the-token", expect=401)
    await b.login(cloud.service.admin_token)
    await b.page("/dashboard/outlets")
    events = [(r.event, r.fields) for r in caplog.records if hasattr(r, "event")]
    assert ("dashboard.login_refused", {}) in events
    pages = [f for e, f in events if e == "http.request" and f["path"] == "/dashboard/outlets"]
    assert pages and pages[-1]["caller"] == "dashboard:operator"
    session = next(c.value for c in b.client.session.cookie_jar if c.key == "stalela_session")
    text = caplog.text + repr(events)
    assert cloud.service.admin_token not in text and session not in text and "not-the-token" not in text
