"""The text fast path (cloud_stub/textpath.py) changes no result: differential tests.

`checks.check_text` reads an agent's invoices from their JSON text when it recognises them; for
every text, what it returns must be what parsing the text with `json.loads` and checking each
value (`checks.check`) returns — the records, or None for a text that is not a JSON array. The
texts are real sealed invoices laid out as the agent stores them, then mutated where the
recognition could go wrong: escapes, whitespace, key order, duplicate keys, number forms,
lengths, control characters, types, modes.
"""
from __future__ import annotations

import json
import random
from datetime import datetime, timedelta, timezone

import pytest

from fiscal.credential import DelegatedCredential
from fiscal.models import InvoiceRequest
from fiscal.signing import generate_private_key, public_key_text
from cloud_stub import checks, textpath

from cloud_helpers import Agent, invoice_request

# The agent stores an invoice with its members in the model's order, each value canonical.
AGENT_ORDER = ["id", "request_id", "status", "mode", "type", "price_mode", "invoice_number", "merchant_nif",
               "outlet_id", "isf", "pos_terminal_id", "operator", "client", "items", "lines", "comments",
               "reference", "usd_rate", "totals", "security", "chain"]


def agent_text(invoice: dict) -> str:
    return "{" + ",".join(f'"{k}":' + json.dumps(invoice[k], sort_keys=True, separators=(",", ":"),
                                                 ensure_ascii=False) for k in AGENT_ORDER) + "}"


def general(payload: bytes, keys: dict) -> list | None:
    try:
        value = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    if type(value) is not list:
        return None
    return [checks.check(raw, keys, {}) for raw in value]


@pytest.fixture(scope="module")
def sealed() -> tuple[list[str], dict[str, str]]:
    """Texts of real delegated invoices (varied items, clients, references) and their signer keys."""
    issuer = generate_private_key()
    key = generate_private_key()
    now = datetime.now(timezone.utc).replace(microsecond=0)
    cred = DelegatedCredential.issue(issuer, "kid", id="DC-0123456789AB", outlet_id="KIN-01", merchant_nif="A1234567B",
                                     agent_public_key=public_key_text(key), block_start=1, block_end=1000,
                                     not_before=now - timedelta(hours=1), not_after=now + timedelta(hours=11))
    agent = Agent(id="AG", token="t", outlet={"id": "KIN-01", "merchant_nif": "A1234567B",
                                               "time_zone": "Africa/Kinshasa"}, key=key)
    rnd = random.Random(7)
    texts = []
    for n in range(1, 61):
        request = invoice_request(price=f"{rnd.randint(1, 99999)}.{rnd.randint(0, 99):02d}", group=rnd.choice("ABC"))
        body = request.model_dump(mode="json")
        body["items"] = body["items"] * rnd.randint(1, 4)
        if n % 3 == 0:
            body["client"] = {"type": "PM", "nif": "A9001255A", "name": "ABC SARL élan"}
        if n % 5 == 0:
            body["items"][0]["name"] = "NAME" * 16  # the longest a name may be
        request = InvoiceRequest.model_validate(body)
        texts.append(agent_text(agent.seal(cred, n, request=request)))
    return texts, {cred.id: public_key_text(key)}


def canonical_text(text: str) -> str:
    """The same invoice as agents store it now: its canonical text (top-level keys sorted too)."""
    return json.dumps(json.loads(text), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


@pytest.fixture(scope="module", params=["model order", "sorted"])
def sealed_either(request, sealed) -> tuple[list[str], dict[str, str]]:
    texts, keys = sealed
    return (texts if request.param == "model order" else [canonical_text(t) for t in texts]), keys


def test_the_agents_invoices_are_recognised_and_give_the_same_records(sealed_either):
    texts, keys = sealed_either
    assert all(textpath.INVOICE.fullmatch(t) for t in texts)  # the fast path is taken...
    payload = ("[" + ",".join(texts) + "]").encode()
    records = checks.check_text(payload, keys, {})
    assert records == general(payload, keys)  # ...and changes nothing
    checked = [checks.Checked(*r) for r in records]
    assert all(c.invalid is None and c.problems == [] for c in checked)  # well-formed, signatures verify
    assert all(c.arith is None for c in checked), [c.arith_detail for c in checked]  # and they add up


def test_amounts_and_credit_references_are_read_from_the_text_as_from_the_value():
    """The tax engine's verdict and a credit note's reference, on the text path: the same records."""
    key = generate_private_key()
    now = datetime.now(timezone.utc).replace(microsecond=0)
    cred = DelegatedCredential.issue(generate_private_key(), "kid", id="DC-0123456789AB", outlet_id="KIN-01",
                                     merchant_nif="A1234567B", agent_public_key=public_key_text(key), block_start=1,
                                     block_end=10, not_before=now - timedelta(hours=1), not_after=now + timedelta(hours=1))
    agent = Agent(id="AG", token="t", outlet={"id": "KIN-01", "merchant_nif": "A1234567B",
                                               "time_zone": "Africa/Kinshasa"}, key=key)
    credit = agent.seal(cred, 1, request=invoice_request("10.00", "FA", reference="ABCDEFGHJKMNPQRSTVWXYZ23"))
    lying = agent.seal(cred, 2, tamper=lambda inv: inv["totals"]["by_group"]["B"].update(vat="0.00"))
    texts = [agent_text(credit), agent_text(lying)]
    assert all(textpath.INVOICE.fullmatch(t) for t in texts)
    payload = ("[" + ",".join(texts) + "]").encode()
    keys = {cred.id: public_key_text(key)}
    records = checks.check_text(payload, keys, {})
    assert records == general(payload, keys)
    first, second = (checks.Checked(*r) for r in records)
    assert (first.reference_code, first.total, first.arith) == ("ABCDEFGHJKMNPQRSTVWXYZ23", "10.00", None)
    assert first.code == credit["security"]["code"]
    assert (second.reference_code, second.arith) == (None, "groups_mismatch")


@pytest.mark.parametrize("edit", [
    lambda t: t.replace('"request_id":"', '"request_id":"A B', 1),  # the request model refuses it
    lambda t: t.replace('"request_id":"', '"request_id":"' + "R" * 64, 1),
    lambda t: t.replace('"invoice_number":"', '"invoice_number":"' + "N" * 64, 1),
    lambda t: t.replace('"pos_terminal_id":"', '"pos_terminal_id":"\x7f', 1),
    lambda t: t.replace('"type":"FV"', '"type":"FA"', 1),  # a credit note without its reference
    lambda t: t.replace('"reference":null', '"reference":{"code":"ABCDEFGHJKMNPQRSTVWXYZ23","nature":"COR"}', 1),
    lambda t: t.replace('"method":"E"', '"method":"C"', 1),
    lambda t: t.replace('"price_mode":"TTC"', '"price_mode":"HT"', 1),
    lambda t: t.replace('"tax_group":"B"', '"tax_group":"O"', 1),
    lambda t: t.replace('"usd_equivalent":null', '"usd_equivalent":"1.00"', 1),
], ids=["request-id", "request-id-long", "number-long", "terminal-del", "fa", "fv-reference", "card", "ht",
        "group", "usd"])
def test_the_quick_verdict_is_the_models(sealed, edit):
    """Every doubt of the text path's quick arithmetic goes to the model: the same verdict."""
    texts, keys = sealed
    for base in texts[:12]:
        text = edit(base)
        assert textpath.INVOICE.fullmatch(text), text[:80]
        payload = f"[{text}]".encode()
        assert checks.check_text(payload, keys, {}) == general(payload, keys)


MUTATIONS = [
    # character level, anywhere
    lambda t, r: _at(t, r, lambda c: r.choice('0123456789abcAZ"\\{}[],: .-é\x7f\x01')),
    lambda t, r: _insert(t, r, r.choice([" ", "\n", "\\u0041", "\\\\", "\\/", "\\n", "\u2028", "é", "0", "-", ","])),
    lambda t, r: _delete(t, r),
    # an ASCII character of a string written as an escape: the same value, not canonical
    lambda t, r: _escape_one(t, r),
    # numbers: leading zeros, -0, floats, exponents, 16 digits
    lambda t, r: _sub(t, r, r'"fiscal_number":\d+', lambda m: '"fiscal_number":' + r.choice(
        ["0", "01", "-0", "-1", "1.0", "1e0", "9007199254740993", "1234567890123456", "true", '"1"', "null"])),
    lambda t, r: _sub(t, r, r'"(total|type)":\d+', lambda m: f'"{m.group(1)}":' + r.choice(["-0", "00", "1.5", "-7"])),
    # money and quantities
    lambda t, r: _sub(t, r, r'"(unit_price|quantity|total|vat|ht|amount|paid)":"[^"]*"', lambda m: f'"{m.group(1)}":"'
                      + r.choice(["0", "0.00", "-1.00", "1.234", "1.", ".5", "01", "1e2", "１", "12345678901234567"]) + '"'),
    # tax groups out of order, twice, or unknown
    lambda t, r: _sub(t, r, r'"by_group":\{"([A-P])"', lambda m: '"by_group":{"' + r.choice("AZBP") + '"'),
    lambda t, r: t.replace('"by_group":{', '"by_group":{"P":{"ht":"1.00","rate":"0.00","total":"1.00","vat":"0.00"},', 1),
    lambda t, r: t.replace('"by_group":{', '"by_group":{"A":{"ht":"1.00","rate":"0.00","total":"1.00","vat":"0.00"},', 1),
    # nested key order and duplicates
    lambda t, r: t.replace('{"ht":', '{"rate":"1.00","ht":', 1),
    lambda t, r: t.replace('"code":', '"code":"X","code":', 1),
    lambda t, r: t.replace('{"address":', '{"type":"PM","address":', 1),
    # lengths and control characters of bounded texts
    lambda t, r: _sub(t, r, r'"name":"[^"]*"', lambda m: '"name":"' + r.choice(["N" * 65, "N" * 64, "", "A\x7fB", "é" * 64, "N" * 33]) + '"'),
    lambda t, r: _sub(t, r, r'"operator":\{"id":"[^"]*"', lambda m: '"operator":{"id":"' + r.choice(["1" * 17, "1" * 16, ""]) + '"'),
    # types and values the model or fastpath refuse, or that take another path
    lambda t, r: t.replace('"mode":"delegated"', '"mode":"' + r.choice(["cloud", "device", "x"]) + '"', 1),
    lambda t, r: t.replace('"status":"sealed"', '"status":"' + r.choice(["draft", "sealed "]) + '"', 1),
    lambda t, r: t.replace('"usd_rate":null', '"usd_rate":{"date":"2026-01-05","rate":"2850.00"}', 1),
    lambda t, r: t.replace('"comments":{}', '"comments":{"A":"x"}', 1),
    lambda t, r: t.replace('"chain":{', '"sync":{"state":"pending"},"chain":{', 1),
    lambda t, r: t.replace(',"usd_rate":null', '', 1),
    lambda t, r: _sub(t, r, r'"timestamp":"[^"]*"', lambda m: '"timestamp":"' + r.choice(
        ["2026-13-01T00:00:00+01:00", "2026-01-01T00:00:00", "2026-01-01", "x", "2026-01-01T00:00:00Z"]) + '"'),
    lambda t, r: t.replace('"hash":"', '"hash":"x', 1),
    lambda t, r: _sub(t, r, r'"hash":"[^"]*"', lambda m: '"hash":' + r.choice(['""', "null", '"00"'])),
    lambda t, r: _sub(t, r, r'"signature":"[^"]*"', lambda m: '"signature":' + r.choice(['"AAAA"', '"!!"', "null", '""'])),
    lambda t, r: _sub(t, r, r'"reference":null', lambda m: '"reference":{"code":"' + r.choice(["A" * 24, "a" * 24, "A" * 23]) + '","nature":"COR"}'),
    lambda t, r: _sub(t, r, r'"client":\{[^}]*\}', lambda m: '"client":' + r.choice(["null", "{}", '{"type":"PM"}'])),
]


def _at(t, r, new):
    i = r.randrange(len(t))
    return t[:i] + new(t[i]) + t[i + 1:]


def _insert(t, r, s):
    i = r.randrange(len(t))
    return t[:i] + s + t[i:]


def _delete(t, r):
    i = r.randrange(len(t))
    return t[:i] + t[i + 1:]


def _escape_one(t, r):
    i = r.randrange(len(t))
    while i < len(t) and not t[i].isalnum():
        i += 1
    return t if i >= len(t) else t[:i] + f"\\u{ord(t[i]):04x}" + t[i + 1:]


def _sub(t, r, pattern, replace):
    import re
    found = list(re.finditer(pattern, t))
    if not found:
        return t
    m = r.choice(found)
    return t[:m.start()] + replace(m) + t[m.end():]


@pytest.mark.parametrize("seed", range(4))
def test_mutated_texts_give_the_same_records_or_the_same_refusal(sealed_either, seed):
    texts, keys = sealed_either
    rnd = random.Random(seed)
    recognised = 0
    for _ in range(800):
        base = rnd.choice(texts)
        text = base
        for _ in range(rnd.choice([1, 1, 1, 2, 3])):
            text = rnd.choice(MUTATIONS)(text, rnd)
        recognised += textpath.INVOICE.fullmatch(text) is not None
        neighbours = rnd.sample(texts, 2)
        for payload in (f"[{text}]", f"[{neighbours[0]},{text},{neighbours[1]}]", f" [ {text} ,{neighbours[0]}] "):
            data = payload.encode("utf-8", "surrogatepass")
            assert checks.check_text(data, keys, {}) == general(data, keys), (seed, text)
    assert recognised > 100  # the mutants that still take the fast path are compared too
