"""Bad input found by probing the POS API: each was a 500 or was sealed, and must be a clear 4xx
RFC 9457 problem that changes nothing (quality-bars.md). A real agent subprocess, real HTTP."""
from __future__ import annotations

import http.client
import json

import pytest

from tests.support import AgentHarness, invoice

PROBLEM = "application/problem+json"


@pytest.fixture(scope="module")
def agent(tmp_path_factory):
    h = AgentHarness(tmp_path_factory.mktemp("probes") / "agent")
    h.add_credential(h.credential(1, 1000))
    h.start()
    yield h
    h.stop()


def _assert_problem(status: int, body, headers, expected: int) -> None:
    assert status == expected, body
    assert headers["Content-Type"].startswith(PROBLEM)
    assert body["status"] == status and body["detail"]
    assert "Traceback" not in json.dumps(body)


def _refused(agent, body: dict, field: str) -> str:
    """POST body: a 422 naming `field`, and no fiscal number used. Returns the field's message."""
    before = agent.numbers()
    status, answer, headers = agent.post("/v1/invoices", body)
    _assert_problem(status, answer, headers, 422)
    assert agent.numbers() == before
    messages = [e["message"] for e in answer.get("errors", []) if e["field"] == field]
    assert messages, answer
    return messages[0]


def _item(**kw):
    return {"name": "JUS", "type": "BIE", "tax_group": "B", "unit_price": "720.00", "quantity": "1", **kw}


# --------------------------------------------------------------------------- unreadable bodies

@pytest.mark.parametrize("raw, detail", [
    (b"[" * 100_000, "nested too deeply"),
    (b'{"request_id": ' + b"7" * 5000 + b"}", "number too long"),
    (b'{"request_id": "x", "items": [{"quantity": -' + b"1" * 5000 + b"}]}", "number too long"),
])
def test_unreadable_json_is_422(agent, raw, detail):
    before = agent.numbers()
    status, body, headers = agent.post("/v1/invoices", raw=raw)
    _assert_problem(status, body, headers, 422)
    assert detail in body["detail"]
    assert agent.numbers() == before


def test_deep_but_readable_nesting_is_a_validation_error(agent):
    # Below the parser's limit: the model, not the parser, refuses it.
    items = json.loads("[" * 500 + "]" * 500)
    _refused(agent, invoice("deep-1", items=items), "items[0]")


# --------------------------------------------------------------------------- headers and queries

@pytest.mark.parametrize("value", [b"Bearer stk_\xff\xfe", b"Bearer \xc3\x28", b"\xff\xff"])
def test_authorization_header_that_is_not_utf8_is_401(agent, value):
    before = agent.numbers()
    conn = http.client.HTTPConnection("127.0.0.1", agent.port, timeout=30)
    try:
        conn.putrequest("POST", "/v1/invoices")
        conn.putheader("Authorization", value)  # bytes go on the wire as they are
        conn.putheader("Content-Type", "application/json")
        data = json.dumps(invoice("nonutf8-key")).encode()
        conn.putheader("Content-Length", str(len(data)))
        conn.endheaders(data)
        resp = conn.getresponse()
        body = json.loads(resp.read())
        _assert_problem(resp.status, body, dict(resp.getheaders()), 401)
    finally:
        conn.close()
    assert agent.numbers() == before


def test_unknown_route_is_the_documented_404(agent):
    status, body, headers = agent.get("/v1/nothing-here")
    _assert_problem(status, body, headers, 404)
    assert body["type"] == "/problems/not-found" and "/v1/nothing-here" in body["detail"]


@pytest.mark.parametrize("query", [
    "cursor=99999999999999999999999",
    "cursor=9223372036854775808",           # SQLite's largest INTEGER + 1
    "cursor=" + "9" * 5000,
    "cursor=-1", "cursor=1_000", "cursor=%C2%B2",  # "²" passes str.isdigit(), not int()
    "limit=%D9%A3",                            # an Arabic-Indic 3
    "limit=0", "limit=501", "limit=%20%205",
])
def test_bad_list_query_is_400(agent, query):
    _assert_problem(*agent.get(f"/v1/invoices?{query}"), 400)


def test_largest_cursor_is_answered(agent):
    assert agent.post("/v1/invoices", invoice("cursor-max"))[0] == 201
    status, page, _ = agent.get("/v1/invoices?cursor=9223372036854775807&limit=1")
    assert status == 200 and page["items"][0]["request_id"] == "cursor-max"
    status, page, _ = agent.get("/v1/invoices?cursor=1")
    assert status == 200 and page == {"items": [], "next_cursor": None}


@pytest.mark.parametrize("limit", ["%C2%B2", "1" * 5000, "-1"])
def test_bad_report_list_limit_is_400(agent, limit):
    _assert_problem(*agent.get(f"/v1/reports?limit={limit}"), 400)


@pytest.mark.parametrize("path", ["/v1/reports/a", "/v1/reports/a.txt", "/v1/reports/a.pdf"])
@pytest.mark.parametrize("period", [
    "from=0001-01-01&to=9999-12-31", "from=0001-01-01", "to=9999-12-31", "from=9999-12-31",
    "from=1969-12-31&to=2026-01-01",
])
def test_a_report_period_beyond_the_calendar_is_400(agent, path, period):
    before = agent.numbers()
    status, body, headers = agent.get(f"{path}?{period}")
    _assert_problem(status, body, headers, 400)
    assert "1970-01-01" in body["detail"] and "9998-12-31" in body["detail"]
    assert agent.numbers() == before


def test_a_report_over_the_widest_period_answers(agent):
    assert agent.post("/v1/invoices", invoice("a-wide"))[0] == 201
    status, body, _ = agent.get("/v1/reports/a?from=1970-01-01&to=9998-12-31")
    assert status == 200 and body["count"] >= 2


# --------------------------------------------------------------------------- accepted, now refused

@pytest.mark.parametrize("field, item", [
    ("items[0].unit_price", _item(unit_price="720.00\n")),
    ("items[0].unit_price", _item(unit_price="720\n")),
    ("items[0].unit_price", _item(unit_price="\u0667\u0662\u0660.00")),  # Arabic-Indic 720.00
    ("items[0].quantity", _item(quantity="2\n")),
    ("items[0].quantity", _item(quantity="\uff12")),  # fullwidth 2
    ("items[0].original_price", _item(original_price="800.00\n", price_change="REMISE")),
    ("items[0].specific_tax.percent", _item(specific_tax={"percent": "10\n"})),
])
def test_decimal_strings_are_ascii_digits_and_nothing_after(agent, field, item):
    message = _refused(agent, invoice("dec-1", items=[item]), field)
    assert "decimal string" in message


def test_payment_amount_with_trailing_newline_is_refused(agent):
    _refused(agent, invoice("dec-2", payments=[{"method": "E", "amount": "1000.00\n"}]), "payments[0].amount")


@pytest.mark.parametrize("value", [0, 1_700_000_000, 20260101, True, "20260101", "2026-01-01T00:00:00",
                                   "2026-02-30", " 2026-01-01", "2026-01-01\n", "\u0662\u0660\u0662\u0666-01-01"])
def test_usd_rate_date_is_an_iso_date_string(agent, value):
    _refused(agent, invoice("usd-1", usd_rate={"rate": "2850.00", "date": value}), "usd_rate.date")


def test_usd_rate_with_an_iso_date_is_sealed(agent):
    status, body, _ = agent.post("/v1/invoices", invoice("usd-ok", usd_rate={"rate": "2850.00", "date": "2026-01-02"}))
    assert status == 201, body
    assert body["usd_rate"] == {"rate": "2850.00", "date": "2026-01-02"}


# Characters that print as nothing, as a line break, or reorder the text around them.
SPOOFING = {
    "LRE": "\u202a", "RLE": "\u202b", "PDF": "\u202c", "LRO": "\u202d", "RLO": "\u202e",
    "LRI": "\u2066", "RLI": "\u2067", "FSI": "\u2068", "PDI": "\u2069", "LRM": "\u200e", "RLM": "\u200f",
    "ALM": "\u061c", "ZWSP": "\u200b", "ZWNJ": "\u200c", "ZWJ": "\u200d", "WJ": "\u2060", "BOM": "\ufeff",
    "NEL": "\u0085", "LS": "\u2028", "PS": "\u2029", "C1": "\u009b",
}


@pytest.mark.parametrize("name", sorted(SPOOFING))
def test_spoofing_character_in_an_item_name_is_refused(agent, name):
    char = SPOOFING[name]
    message = _refused(agent, invoice("spoof-1", items=[_item(name=f"JUS{char}ORANGE")]), "items[0].name")
    assert f"U+{ord(char):04X}" in message


def _at(path: str, value: str) -> dict:
    """A valid request with `value` in the free-text field at `path`."""
    body = invoice("spoof-2", client={"type": "PM", "nif": "A1", "name": "ABC"}, comments={"A": "merci"},
                   items=[_item(code="SKU", original_price="800.00", price_change="REMISE",
                                specific_tax={"percent": "5", "description": "TS"})])
    parts = path.replace("[0]", ".0").split(".")
    target = body
    for part in parts[:-1]:
        target = target[int(part)] if part.isdigit() else target[part]
    target[parts[-1]] = value
    return body


TEXT_FIELDS = ["invoice_number", "pos_terminal_id", "operator.id", "operator.name", "client.nif", "client.name",
               "client.address", "client.phone", "client.email", "client.rccm", "comments.A", "items[0].name",
               "items[0].code", "items[0].price_change", "items[0].specific_tax.description"]


def test_the_free_text_fixture_is_valid(agent):
    status, body, _ = agent.post("/v1/invoices", _at("comments.A", "merci"))
    assert status == 201, body


@pytest.mark.parametrize("path", TEXT_FIELDS)
def test_spoofing_character_in_any_free_text_field_is_refused(agent, path):
    message = _refused(agent, _at(path, "AB\u202eCD"), path)
    assert "U+202E" in message


def test_ordinary_non_ascii_text_is_still_sealed(agent):
    body = invoice("utf8-ok", operator={"id": "7", "name": "Kalenga Ngoy Mbuyi"},
                   items=[_item(name="Café crème – 1 L"), _item(name="Ṅgàndà ÉÈ ñ ß €")],
                   comments={"A": "Mèsi mingi · Matondo"})
    status, answer, _ = agent.post("/v1/invoices", body)
    assert status == 201, answer
    assert answer["items"][1]["name"] == "Ṅgàndà ÉÈ ñ ß €"


def test_openapi_states_the_text_rule(agent):
    import re

    status, doc, _ = agent.get("/v1/openapi.json")
    assert status == 200
    pattern = doc["components"]["schemas"]["RequestOperator"]["properties"]["name"]["pattern"]
    rule = re.compile(pattern)  # ECMA-262's \uXXXX escapes read the same in Python
    for char in [*SPOOFING.values(), "\x00", "\n", "\x7f", "\x80"]:
        assert rule.fullmatch(f"A{char}B") is None, repr(char)
    for text in ["Jan", "Café crème – 1 L", "Ṅgàndà €", "محمد", "A, <B> & C"]:
        assert rule.fullmatch(text), text
