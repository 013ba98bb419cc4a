"""The e-MCF body → InvoiceRequest mapping on its own (agent/emcf/mapping.py): numbers through
their decimal text, names, and the refusals that never reach the tax engine."""
from __future__ import annotations

from decimal import Decimal

import pytest

from agent.emcf import mapping
from agent.emcf.mapping import EmcfError
from fiscal.models import InvoiceRequest


def _body(**extra):
    body = {"rn": "R-1", "type": "FV", "mode": "ht", "operator": {"id": 7, "name": "Jan"},
            "items": [{"name": "JUS", "type": "ser", "price": Decimal("930.0"), "quantity": 2, "taxGroup": "b"}]}
    body.update(extra)
    return body


def _map(body):
    return mapping.to_invoice_request(body, request_id="emcf-1", terminal="POS-01", merchant_nif="A1234567B")


def test_a_mapped_body_is_a_valid_invoice_request():
    req = _map(_body(client={"type": "pp", "name": "X", "contact": "x@y.cd"},
                     payment=[{"name": "Mobile Money", "amount": 100}, {"name": "carte_bancaire", "amount": None}],
                     curCode="usd", curRate=Decimal("2850.5"), curDate="2026-03-01 10:00:00", cmta="MERCI"))
    InvoiceRequest.model_validate(req)
    assert req["price_mode"] == "HT" and req["operator"] == {"id": "7", "name": "Jan"}
    assert req["items"][0] == {"name": "JUS", "type": "SER", "tax_group": "B", "unit_price": "930.00", "quantity": "2"}
    assert req["client"] == {"type": "PP", "name": "X", "email": "x@y.cd"}
    assert req["payments"] == [{"method": "M", "amount": "100.00"}, {"method": "C"}]
    assert req["usd_rate"] == {"rate": "2850.50", "date": "2026-03-01"} and req["comments"] == {"A": "MERCI"}


@pytest.mark.parametrize("text, places, expected", [
    ("0.30000000000000004", "0.01", "0.30"), ("4063.9999999999995", "0.01", "4064.00"),
    ("2.5", "0.001", "2.500"), ("1E+3", "0.01", "1000.00"), ("720.005", "0.01", "720.01"),
])
def test_numbers_go_through_their_decimal_text(text, places, expected):
    assert str(mapping.number(Decimal(text), "x", Decimal(places))) == expected
    assert str(mapping.number(mapping.read_json(text.encode()), "x", Decimal(places))) == expected


@pytest.mark.parametrize("value", [Decimal("NaN"), Decimal("Infinity"), Decimal("-1"), -5, None, True, "abc",
                                   Decimal("1E+400"), [1]])
def test_numbers_refused(value):
    with pytest.raises(EmcfError) as refused:
        mapping.number(value, "items[0].price")
    assert refused.value.code == mapping.INVALID_INVOICE and "items[0].price" in refused.value.desc


def test_read_json_refuses_nan_and_keeps_decimals():
    with pytest.raises(EmcfError):
        mapping.read_json(b'{"price": NaN}')
    assert mapping.read_json(b'{"price": 720.10}') == {"price": Decimal("720.10")}


def test_dumps_writes_decimals_as_exact_numbers():
    assert mapping.dumps({"total": Decimal("999999999999999.99"), "n": [Decimal("0.10")]}) == \
        '{"total":999999999999999.99,"n":[0.10]}'


def test_price_change_and_specific_tax():
    items = [{"name": "SPEC", "type": "BIE", "price": 500, "quantity": 4, "taxGroup": "B", "originalPrice": 1000,
              "taxSpecificAmount": 300}]
    item = _map(_body(items=items))["items"][0]
    assert item["original_price"] == "1000.00" and item["price_change"] == "REMISE"
    assert item["specific_tax"] == {"per_unit": "75.00"}
    with pytest.raises(EmcfError):  # 301 is no per-unit amount (to the cent) times 3
        _map(_body(items=[{**items[0], "quantity": 3, "taxSpecificAmount": 301}]))
    same = _map(_body(items=[{**items[0], "originalPrice": 500}]))["items"][0]
    assert "original_price" not in same


@pytest.mark.parametrize("path, theirs", [
    ("items[0].unit_price", "items[0].price"), ("items[2].tax_group", "items[2].taxGroup"),
    ("reference.code", "reference"), ("payments[1].method", "payment[1].name"), ("invoice_number", "rn"),
    ("items[0].specific_tax.per_unit", "items[0].taxSpecificValue"), ("comments.B", "cmtb"),
])
def test_field_names_in_the_clients_terms(path, theirs):
    assert mapping.field_name(path) == theirs


def test_nif_of_another_taxpayer_is_refused():
    with pytest.raises(EmcfError) as refused:
        _map(_body(nif="B0000000X"))
    assert refused.value.code == mapping.NIF_MISMATCH
