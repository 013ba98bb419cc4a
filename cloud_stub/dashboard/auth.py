"""Logging in and out of the dashboard, and the checks every action (POST) passes."""
from __future__ import annotations

import hmac
import logging
import secrets
from functools import wraps
from typing import Awaitable, Callable

from aiohttp import web

from ..errors import CloudError, Forbidden
from ..logs import event
from . import access
from .access import Viewer
from .render import VIEWER, error_page, html, service

COOKIE = "stalela_session"
# The login form's own CSRF token (double submit: a cookie and a field that must match), so no
# other site can log a browser in to a session of its choosing.
LOGIN_COOKIE = "stalela_login"
PATH = "/dashboard"


async def current_viewer(request: web.Request) -> Viewer | None:
    if VIEWER in request:
        return request[VIEWER]
    session_id = request.cookies.get(COOKIE)
    viewer = None
    if session_id:
        svc = service(request)
        viewer = await svc.call(access.viewer, svc.store, session_id, svc.now())
    if viewer is not None:
        request[VIEWER] = viewer
        from ..app import CALLER  # the request log names who asked (never the session itself)

        request[CALLER] = {"id": "dashboard:operator" if viewer.operator else f"dashboard:merchant:{viewer.merchant_nif}"}
    return viewer


def _secure(request: web.Request) -> bool:
    return request.secure or service(request).config.secure_cookies


def _set_cookie(request: web.Request, response: web.StreamResponse, name: str, value: str,
                max_age: int | None) -> None:
    response.set_cookie(name, value, max_age=max_age, path=PATH, httponly=True, samesite="Strict",
                        secure=_secure(request))


def _safe_next(target: str | None) -> str:
    """Where to go after logging in: a dashboard page of this site, never another site."""
    if target and target.startswith(PATH + "/") and not target.startswith("//") and "\\" not in target:
        return target
    return PATH + "/outlets"


def _login_form(request: web.Request, message: str | None = None, status: int = 200,
                next_: str | None = None) -> web.Response:
    token = request.cookies.get(LOGIN_COOKIE) or secrets.token_urlsafe(24)
    response = html(request, "login.html", {"login_csrf": token, "message": message,
                                            "next": _safe_next(next_ or request.query.get("next"))}, status)
    _set_cookie(request, response, LOGIN_COOKIE, token, None)
    return response


async def login_page(request: web.Request) -> web.Response:
    return _login_form(request)


async def login(request: web.Request) -> web.StreamResponse:
    form = await request.post()
    cookie = request.cookies.get(LOGIN_COOKIE, "")
    field = str(form.get("login_csrf", ""))
    target = str(form.get("next", ""))  # kept through a refused attempt
    if not cookie or not hmac.compare_digest(cookie.encode(), field.encode()):
        return _login_form(request, "The form expired: please try again.", 403, target)
    token = str(form.get("token", "")).strip()
    svc = service(request)
    # Whatever was wrong (unknown, expired, revoked, a typo), one answer: nothing to learn from it.
    result = await svc.call(access.log_in, svc.store, token, svc.admin_token,
                            svc.config.dashboard_session_ttl, svc.now()) if token else None
    if result is None:
        event("dashboard.login_refused", level=logging.WARNING)  # many of these: someone is guessing
        return _login_form(request, "That token was not accepted.", 401, target)
    session_id, role = result
    response = web.HTTPSeeOther(_safe_next(target))
    _set_cookie(request, response, COOKIE, session_id, int(svc.config.dashboard_session_ttl.total_seconds()))
    response.del_cookie(LOGIN_COOKIE, path=PATH)
    event("dashboard.login", role=role)
    raise response


async def logout(request: web.Request) -> web.StreamResponse:
    viewer = await current_viewer(request)
    if viewer is None:
        raise web.HTTPSeeOther(PATH + "/login")
    form = await request.post()
    if not _csrf_ok(viewer, form):
        return error_page(request, 403, "Forbidden", "The form expired: reload the page and try again.")
    svc = service(request)
    await svc.call(access.log_out, svc.store, viewer)
    response = web.HTTPSeeOther(PATH + "/login")
    response.del_cookie(COOKIE, path=PATH)
    event("dashboard.logout", role=viewer.role)
    raise response


def _csrf_ok(viewer: Viewer, form) -> bool:
    sent = str(form.get("csrf", ""))
    return hmac.compare_digest(sent.encode(), viewer.csrf.encode())


def action(fn: Callable[[web.Request, Viewer, dict], Awaitable[str]]):
    """An action (a POST from a page's form): a logged-in viewer and the page's CSRF token, then
    `fn`, which checks the outlet's scope before the role (another merchant's outlet is 404, as an
    unknown one) and returns the page to go back to. Refusals are HTML error pages."""
    @wraps(fn)
    async def handler(request: web.Request) -> web.StreamResponse:
        viewer = await current_viewer(request)
        if viewer is None:
            raise web.HTTPSeeOther(PATH + "/login")
        form = await request.post()
        try:
            if not _csrf_ok(viewer, form):
                raise Forbidden("csrf", "The form expired: reload the page and try again.")
            target = await fn(request, viewer, dict(form))
        except CloudError as exc:
            return error_page(request, exc.status, exc.title, exc.detail)
        raise web.HTTPSeeOther(target)
    return handler


def require_operator(viewer: Viewer) -> None:
    if not viewer.operator:
        raise Forbidden("read_only", "This view is read-only: actions are the operator's.")
