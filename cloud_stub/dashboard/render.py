"""One handler per page, two answers: the HTML page, or the same data as JSON (`?format=json`
or a `.json` suffix, as Datasette does). Authentication, tenant errors and headers are here."""
from __future__ import annotations

import json
from functools import wraps
from typing import Any, Awaitable, Callable
from urllib.parse import quote

import aiohttp_jinja2
from aiohttp import web

from ..errors import CloudError, NotFound, Unauthorized
from .access import Viewer

VIEWER = web.RequestKey("dashboard_viewer", Viewer)

# No script runs on these pages, no style comes from elsewhere and no other site may frame them
# (the actions are buttons: a framing page could trick an operator into pressing one).
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; img-src 'self' data:; "
                               "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def service(request: web.Request):
    """The cloud service (app.py imports this package, so its keys are read at call time)."""
    from ..app import SERVICE

    return request.app[SERVICE]


def wants_json(request: web.Request) -> bool:
    return request.match_info.get("ext") == ".json" or request.query.get("format") == "json"


def json_response(data: Any, status: int = 200) -> web.Response:
    response = web.json_response(data, status=status, dumps=lambda d: json.dumps(d, ensure_ascii=False))
    response.headers.update(HEADERS)
    return response


def html(request: web.Request, template: str, context: dict, status: int = 200) -> web.Response:
    response = aiohttp_jinja2.render_template(template, request, {"viewer": request.get(VIEWER), **context},
                                              status=status)
    response.headers.update(HEADERS)
    return response


def error_page(request: web.Request, status: int, title: str, detail: str) -> web.Response:
    return html(request, "error.html", {"title": title, "detail": detail}, status)


Handler = Callable[[web.Request, Viewer], Awaitable[dict]]


def page(template: str) -> Callable[[Handler], Callable[[web.Request], Awaitable[web.StreamResponse]]]:
    """A dashboard page: a logged-in viewer, the data as `template` or JSON. Domain errors
    become an HTML error page (JSON keeps the API's problem details)."""
    def decorate(fn: Handler):
        @wraps(fn)
        async def handler(request: web.Request) -> web.StreamResponse:
            from .auth import current_viewer  # auth uses this module's helpers

            as_json = wants_json(request)
            viewer = await current_viewer(request)
            if viewer is None:
                if as_json:
                    raise Unauthorized("unauthorized", "log in to the dashboard (a session cookie) first")
                raise web.HTTPSeeOther("/dashboard/login?next=" + quote(request.path_qs, safe=""))
            try:
                data = await fn(request, viewer)
            except CloudError as exc:
                if as_json:
                    raise
                return error_page(request, exc.status, exc.title, exc.detail)
            if as_json:
                return json_response(data)
            as_json_url = request.path + ".json" + (f"?{request.query_string}" if request.query_string else "")
            return html(request, template, {"data": data, "json_url": as_json_url})
        return handler
    return decorate


def download(fn: Callable[[web.Request, Viewer], Awaitable[web.Response]]):
    """A file for a logged-in viewer (a PDF): the page's login redirect and error pages."""
    @wraps(fn)
    async def handler(request: web.Request) -> web.StreamResponse:
        from .auth import current_viewer

        viewer = await current_viewer(request)
        if viewer is None:
            raise web.HTTPSeeOther("/dashboard/login?next=" + quote(request.path_qs, safe=""))
        try:
            response = await fn(request, viewer)
        except CloudError as exc:
            return error_page(request, exc.status, exc.title, exc.detail)
        response.headers.update(HEADERS)
        return response
    return handler


def outlet_in_scope(outlet: dict | None, viewer: Viewer, outlet_id: str) -> dict:
    """The outlet if the viewer may see it; another merchant's outlet is not found, as an
    unknown one is (the answer reveals nothing)."""
    if outlet is None or (not viewer.operator and outlet["merchant_nif"] != viewer.merchant_nif):
        raise NotFound("outlet_not_found", f"no outlet {outlet_id}")
    return outlet
