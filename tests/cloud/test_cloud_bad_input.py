"""Bad input found by probing the cloud API: each was a 500 or was accepted, and must be a clear
4xx RFC 9457 problem that changes nothing. The real service over HTTP on 127.0.0.1."""
from __future__ import annotations

import asyncio
import json

import pytest

from cloud_helpers import invoice_request


def assert_problem(status: int, headers, data, expected: int) -> None:
    assert status == expected, data
    assert headers["Content-Type"].startswith("application/problem+json")
    assert set(data) >= {"type", "title", "status", "detail"} and data["status"] == status
    assert "Traceback" not in json.dumps(data)


def count(cloud, table: str) -> int:
    with cloud.service.store.read() as tx:  # whichever backend the run uses (tests/cloud/conftest.py)
        return tx._one(f"SELECT count(*) AS n FROM {table}")["n"]


async def raw_request(cloud, head: bytes, body: bytes = b"") -> tuple[int, dict, dict]:
    """One HTTP/1.1 request written byte for byte (aiohttp's client would not send these headers)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", cloud.client.server.port)
    try:
        writer.write(head + b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)
        await writer.drain()
        answer = await reader.read()
    finally:
        writer.close()
    head_text, _, payload = answer.partition(b"\r\n\r\n")
    lines = head_text.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, json.loads(payload)


@pytest.mark.parametrize("value", [b"Bearer stla_\xff\xfe", b"Bearer \xc3\x28", b"Bearer adm\xe9"])
@pytest.mark.parametrize("path", [b"/v1/admin/outlets", b"/v1/outlets/KIN-01"])
async def test_bearer_token_that_is_not_utf8_is_401(cloud, value, path):
    await cloud.outlet()
    status, headers, data = await raw_request(
        cloud, b"GET " + path + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: " + value + b"\r\n")
    assert_problem(status, headers, data, 401)
    assert headers["WWW-Authenticate"].startswith("Bearer")


async def test_non_utf8_token_cannot_enroll_or_seal(cloud):
    await cloud.outlet()
    body = json.dumps({"invoice": invoice_request().model_dump(mode="json")}).encode()
    status, headers, data = await raw_request(
        cloud, b"POST /v1/seal HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
               b"Authorization: Bearer \x80\x81\r\n", body)
    assert_problem(status, headers, data, 401)
    assert count(cloud, "ledger") == 0


@pytest.mark.parametrize("ttl", ["0s", "0m", "0h", "000000d", "\u0661h", "1s\n", "-1h", "1w", ""])
async def test_bad_token_ttl_is_422_and_creates_no_token(cloud, ttl):
    await cloud.outlet()
    before = count(cloud, "enrollment_tokens")
    resp = await cloud.client.post("/v1/admin/outlets/KIN-01/tokens", json={"ttl": ttl}, headers=cloud.admin)
    assert_problem(resp.status, resp.headers, await resp.json(content_type=None), 422)
    assert count(cloud, "enrollment_tokens") == before


async def test_positive_token_ttl_still_works(cloud):
    await cloud.outlet()
    assert (await cloud.token("KIN-01", "1s")).startswith("stle_")
    assert (await cloud.token("KIN-01", "999999d")).startswith("stle_")


@pytest.mark.parametrize("value", ["\u00b2", "1" * 5000, "\u0663", "-1", " 5"])
@pytest.mark.parametrize("name", ["after", "limit"])
async def test_bad_integer_parameter_is_422(cloud, name, value):
    await cloud.outlet()
    resp = await cloud.client.get("/v1/outlets/KIN-01/ledger", params={name: value}, headers=cloud.admin)
    assert_problem(resp.status, resp.headers, await resp.json(content_type=None), 422)


@pytest.mark.parametrize("field, value", [("id", "KIN-02\n"), ("merchant_nif", "A1234567B\n")])
async def test_registry_ids_with_a_trailing_newline_are_refused(cloud, field, value):
    await cloud.outlet()
    before = count(cloud, "outlets")
    body = {"id": "KIN-02", "merchant_nif": "A1234567B", "name": "X", **{field: value}}
    resp = await cloud.client.post("/v1/admin/outlets", json=body, headers=cloud.admin)
    assert 400 <= resp.status < 500
    assert_problem(resp.status, resp.headers, await resp.json(content_type=None), resp.status)
    assert count(cloud, "outlets") == before


async def test_merchant_nif_with_a_trailing_newline_is_refused(cloud):
    resp = await cloud.client.post("/v1/admin/merchants", json={"nif": "A1\n", "name": "M"}, headers=cloud.admin)
    assert_problem(resp.status, resp.headers, await resp.json(content_type=None), 422)
    assert count(cloud, "merchants") == 0


@pytest.mark.parametrize("path, value", [
    ("operator.name", "Jan\u202e"),
    ("items[0].name", "JUS\u200b"),
    ("items[0].unit_price", "1160.00\n"),
    ("usd_rate.date", 0),
])
async def test_cloud_seal_refuses_what_the_agent_refuses(cloud, path, value):
    await cloud.outlet()
    agent = await cloud.enroll()
    invoice = invoice_request().model_dump(mode="json")
    invoice["usd_rate"] = {"rate": "2850.00", "date": "2026-01-02"}
    parts = path.replace("[0]", ".0").split(".")
    target = invoice
    for part in parts[:-1]:
        target = target[int(part)] if part.isdigit() else target[part]
    target[parts[-1]] = value
    resp = await cloud.client.post("/v1/seal", json={"invoice": invoice}, headers=agent.headers)
    data = await resp.json(content_type=None)
    assert_problem(resp.status, resp.headers, data, 422)
    assert any(e["field"] == f"invoice.{path}" for e in data["errors"]), data
    assert count(cloud, "ledger") == 0


@pytest.mark.parametrize("query", ["from=0001-01-01&to=9999-12-31", "to=9999-12-31", "from=0001-01-01",
                                   "from=0001-01-01T00:00:00%2B05:00", "to=9999-12-31T23:00:00-05:00"])
@pytest.mark.parametrize("path", ["summary", "reports/a", "reports/x"])
async def test_period_beyond_the_calendar_is_422(cloud, path, query):
    await cloud.outlet()
    resp = await cloud.client.get(f"/v1/outlets/KIN-01/{path}?{query}", headers=cloud.admin)
    data = await resp.json(content_type=None)
    assert_problem(resp.status, resp.headers, data, 422)
    assert data["type"].endswith("/bad_period")


async def test_widest_period_is_answered(cloud):
    await cloud.outlet()
    data = await cloud.get("/v1/outlets/KIN-01/summary?from=1970-01-01&to=9998-12-31", cloud.admin)
    assert data["count"] == 0
