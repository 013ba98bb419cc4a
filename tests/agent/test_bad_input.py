"""Bad input: a clear 4xx problem, nothing stored, no fiscal number consumed (quality-bars.md)."""
from __future__ import annotations

import json

import pytest

from agent.api.keys import create_key
from tests.support import AgentHarness, invoice


@pytest.fixture(scope="module")
def agent(tmp_path_factory):
    h = AgentHarness(tmp_path_factory.mktemp("bad") / "agent")
    h.add_credential(h.credential(1, 1000))
    h.start()
    yield h
    h.stop()


def _item(**kw):
    base = {"name": "JUS", "type": "BIE", "tax_group": "B", "unit_price": "930.00", "quantity": "1"}
    base.update(kw)
    return base


def _with_items(rid, *items, **kw):
    return invoice(rid, items=list(items), **kw)


BAD_BODIES = {
    "float_money": _with_items("b1", _item(unit_price=930.0)),
    "int_money": _with_items("b2", _item(unit_price=930)),
    "wrong_type_items": invoice("b3", items="JUS"),
    "zero_quantity": _with_items("b4", _item(quantity="0")),
    "negative_quantity": _with_items("b5", _item(quantity="-1")),
    "zero_price": _with_items("b6", _item(unit_price="0.00")),
    "negative_price": _with_items("b7", _item(unit_price="-5.00")),
    "three_decimals": _with_items("b8", _item(unit_price="1.005")),
    "four_decimal_quantity": _with_items("b9", _item(quantity="1.0001")),
    "unknown_tax_group": _with_items("b10", _item(tax_group="Z")),
    "group_not_for_item_type": _with_items("b11", _item(type="TAX", tax_group="B")),
    "overflowing_totals": _with_items("b12", *[_item(unit_price="999999999999999.00", quantity="999999")]),
    "too_many_items": _with_items("b13", *[_item() for _ in range(501)]),
    "unknown_field": invoice("b14", surprise=True),
    "unknown_item_field": _with_items("b15", _item(colour="red")),
    "credit_note_without_reference": invoice("b16", type="FA"),
    "credit_note_unknown_original": invoice("b17", type="FA", reference={"nature": "COR", "code": "A" * 24}),
    "control_char_in_name": _with_items("b18", _item(name="JUS\x01")),
    "newline_in_name": _with_items("b19", _item(name="JUS\nX")),
    "very_long_name": _with_items("b20", _item(name="N" * 65)),
    "empty_request_id": invoice(""),
    "long_request_id": invoice("r" * 65),
    "missing_operator": {k: v for k, v in invoice("b21").items() if k != "operator"},
    "bad_payment_method": invoice("b22", payments=[{"method": "BITCOIN", "amount": "1.00"}]),
    "bad_invoice_type": invoice("b23", type="XX"),
    "not_an_object": ["not", "an", "invoice"],
}


@pytest.mark.parametrize("case", sorted(BAD_BODIES))
def test_bad_body_is_refused_and_changes_nothing(agent, case):
    before = agent.numbers()
    status, body, headers = agent.post("/v1/invoices", BAD_BODIES[case])
    assert 400 <= status < 500, (case, status, body)
    assert headers["Content-Type"].startswith("application/problem+json")
    assert {"type", "title", "status", "detail"} <= set(body) and body["status"] == status
    assert "Traceback" not in json.dumps(body)
    assert agent.numbers() == before


@pytest.mark.parametrize("raw,expected", [
    (b'{"request_id": "x", ', 422),            # malformed JSON
    (b'\xff\xfe{"a": 1}', 422),                # invalid UTF-8
    (b"NaN", 422),
    (b"x" * (2 * 1024 * 1024), 413),           # 2 MiB body
])
def test_bad_bytes_are_refused(agent, raw, expected):
    before = agent.numbers()
    status, body, headers = agent.post("/v1/invoices", raw=raw)
    assert status == expected, body
    assert headers["Content-Type"].startswith("application/problem+json")
    assert agent.numbers() == before


def test_validation_errors_name_the_field(agent):
    status, body, _ = agent.post("/v1/invoices", BAD_BODIES["unknown_tax_group"])
    assert status == 422
    assert any(e["field"] == "items[0].tax_group" for e in body["errors"])
    status, body, _ = agent.post("/v1/invoices", BAD_BODIES["group_not_for_item_type"])
    assert any(e["field"] == "items[0].tax_group" for e in body["errors"]), body
    status, body, _ = agent.post("/v1/invoices", BAD_BODIES["unknown_item_field"])
    assert any(e["field"] == "items[0].colour" for e in body["errors"]), body


@pytest.mark.parametrize("key", [None, "stk_wrong", "Basic abc"])
def test_missing_or_wrong_key_is_401(agent, key):
    before = agent.numbers()
    headers = {}
    if key == "Basic abc":
        status, body, h = agent.request("POST", "/v1/invoices", invoice("k1"), key=None,
                                        headers={"Authorization": key})
    else:
        status, body, h = agent.post("/v1/invoices", invoice("k1"), key=key)
    assert status == 401 and h["Content-Type"].startswith("application/problem+json")
    assert agent.numbers() == before


def test_key_of_another_agent_is_401(agent, tmp_path):
    other = AgentHarness(tmp_path / "other")
    status, _, _ = agent.post("/v1/invoices", invoice("k2"), key=other.api_key)
    assert status == 401


def test_credit_note_larger_than_original_is_refused(agent):
    status, original, _ = agent.post("/v1/invoices", _with_items("orig-1", _item(unit_price="1000.00")))
    assert status == 201
    code = original["security"]["code"]
    ref = {"nature": "COR", "code": code}
    before = agent.numbers()
    status, body, _ = agent.post("/v1/invoices", _with_items("cn-1", _item(unit_price="1000.01"), type="FA",
                                                             reference=ref))
    assert status == 422, body
    assert agent.numbers() == before
    status, body, _ = agent.post("/v1/invoices", _with_items("cn-2", _item(unit_price="600.00"), type="FA",
                                                             reference=ref))
    assert status == 201, body
    # What is left to credit is 400.00: a second 600.00 credit would exceed the original.
    status, body, _ = agent.post("/v1/invoices", _with_items("cn-3", _item(unit_price="600.00"), type="FA",
                                                             reference=ref))
    assert status == 422, body


def test_nothing_consumed_after_all_bad_input(agent):
    before = agent.numbers()
    status, body, _ = agent.post("/v1/invoices", invoice("good-after-bad"))
    assert status == 201
    expected = (max(before) + 1) if before else 1
    assert body["security"]["fiscal_number"] == expected
