"""docs/api.md against the real agent: the endpoints it lists are the routes the aiohttp app
serves (and every /v1 route is listed), and its complete request's answer has exactly the fields
a real agent answers."""
from __future__ import annotations

import json
import re

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from agent.api.app import init_app
from agent.config import AgentConfig
from tests.support import ROOT

PAGE = ROOT / "docs" / "api.md"
ROW = re.compile(r"^\| `(GET|POST|PUT|DELETE) ([^`]+)`(.*?)\|", re.M)


def _documented() -> list[tuple[str, str]]:
    """(method, path) of each row of the endpoint tables, with the alternatives a row names
    (`qr.svg`, `qr.png`; `(.txt, .pdf)`) spelled out and the query strings dropped."""
    out = []
    for method, path, rest in ROW.findall(PAGE.read_text()):
        path = path.split("?")[0]
        out.append((method, path))
        for alt in re.findall(r"`([^`]+)`", rest):
            alt = alt.split("?")[0]
            if alt.startswith("."):  # `(.txt, .pdf)`: the same path with an extension
                out.append((method, path + alt))
            elif re.fullmatch(r"[\w.]+\.\w+", alt):  # `qr.png`, `x.pdf`: the last segment replaced
                out.append((method, path.rsplit("/", 1)[0] + "/" + alt))
    return out


def _concrete(path: str) -> str:
    return path.replace("{id}", "5b0c4a52-1f0e-4c8e-9a51-2d8f3c6b7e10")


async def _resolve(app: web.Application, method: str, path: str):
    match = await app.router.resolve(make_mocked_request(method, _concrete(path), app=app))
    return None if match.http_exception is not None else match.route.resource


@pytest.fixture
def app(tmp_path) -> web.Application:
    return init_app(AgentConfig(data_dir=tmp_path))


async def test_every_endpoint_the_page_lists_is_a_route(app):
    documented = _documented()
    assert len(documented) > 20 and ("GET", "/v1/invoices/{id}/receipt.escpos") in documented
    missing = [f"{m} {p}" for m, p in documented if await _resolve(app, m, p) is None]
    assert missing == []


async def test_every_v1_route_is_on_the_page(app):
    listed = set()
    for method, path in _documented():
        resource = await _resolve(app, method, path)
        listed.add((method, resource.canonical))  # /v1/reports/{id} is one path, two patterns
    served = [(route.method, route.resource) for route in app.router.routes()
              if route.method != "HEAD" and route.resource is not None
              and (route.resource.canonical.startswith("/v1/") or route.resource.canonical in ("/", "/metrics"))]
    assert len(served) > 15
    unlisted = [f"{m} {r.canonical}" for m, r in served if (m, r.canonical) not in listed]
    assert unlisted == []


async def test_the_route_check_can_fail(app):
    assert await _resolve(app, "GET", "/v1/receipts/{id}") is None
    assert await _resolve(app, "POST", "/v1/health") is None  # a method the path does not take
    assert await _resolve(app, "GET", "/v1/invoices/{id}/qr.png") is not None


def _shape(value, at: str = "") -> set[str]:
    """Every key path of a JSON value (list items merged)."""
    if isinstance(value, dict):
        return {p for k, v in value.items() for p in {f"{at}.{k}"} | _shape(v, f"{at}.{k}")}
    if isinstance(value, list):
        return {p for v in value for p in _shape(v, at + "[]")}
    return set()


def test_the_documented_answer_is_a_real_answer_in_full(harness):
    page = PAGE.read_text()
    request = json.loads(re.search(r"-d '(\{.*?\})'\n```", page, re.S).group(1))
    shown = json.loads(re.search(r"## Sealed invoice.*?```json\n(.*?)\n```", page, re.S).group(1))
    status_line = re.search(r"```http\n(HTTP/1.1 (\d+) .*)\n", page).group(2)
    harness.add_credential(harness.credential(1, 500))
    harness.start()
    status, answer, headers = harness.post("/v1/invoices", request)
    assert (status, int(status_line)) == (201, 201)
    assert headers["Content-Type"] == "application/json; charset=utf-8"
    assert _shape(shown) == _shape(answer)
    # What does not depend on the moment or the keys is shown as it is.
    for key in ("request_id", "status", "mode", "type", "items", "lines", "totals", "client", "comments",
                "outlet_id", "merchant_nif", "sync"):
        assert shown[key] == answer[key], key
    assert shown["security"]["counters"] == answer["security"]["counters"]
