"""`stalela verify` hashes a delegated invoice as it is stored (its canonical text) instead of
rebuilding it; journals stored in the earlier form still verify, and every alteration is still
named, with the words of the full check."""
from __future__ import annotations

import json
import sqlite3

import pytest

from agent import verify
from agent.config import load_config
from agent.service import AgentService
from agent.store.bodies import pack, unpack
from fiscal.canonical import canonical_bytes
from fiscal.seal import chain_hash
from tests.support import invoice


@pytest.fixture
def journal(harness):
    """Six invoices sealed in-process by the agent's own journal (no daemon needed)."""
    harness.add_credential(harness.credential(1, 100))
    service = AgentService.open(load_config(harness.data_dir))
    try:
        for i in range(6):
            service.journal.submit(service.prepare(invoice(f"S{i}", n_items=3))).result(10)
    finally:
        service.close()
    return harness


def _rows(harness) -> list[tuple[str, str]]:
    conn = sqlite3.connect(harness.data_dir / "agent.db")
    try:
        return [(r[0], unpack(r[1])) for r in conn.execute("SELECT id, body FROM invoices ORDER BY seq")]
    finally:
        conn.close()


def _rewrite(harness, invoice_id: str, text: str, **columns) -> None:
    conn = sqlite3.connect(harness.data_dir / "agent.db")
    sets = "".join(f", {c} = ?" for c in columns)
    conn.execute(f"UPDATE invoices SET body = ?{sets} WHERE id = ?", (pack(text), *columns.values(), invoice_id))
    conn.commit()
    conn.close()


def _verify(harness, **kw):
    return verify.verify_journal(harness.data_dir / "agent.db", harness.issuer_pub, **kw)


def _count_full_checks(monkeypatch) -> list[int]:
    calls = []
    full = verify._problems_in_full

    def counted(*args):
        calls.append(1)
        return full(*args)
    monkeypatch.setattr(verify, "_problems_in_full", counted)
    return calls


def test_the_journal_stores_the_canonical_text(journal):
    for _, text in _rows(journal):
        assert text.encode("utf-8") == canonical_bytes(json.loads(text))


def test_a_canonical_journal_is_checked_as_stored(journal, monkeypatch):
    full = _count_full_checks(monkeypatch)
    report = _verify(journal)
    assert report.ok and report.checked == 6
    assert full == []  # no invoice needed rebuilding


def test_a_journal_in_the_earlier_form_still_verifies(journal, monkeypatch):
    # Journals written before stored the invoice's keys in insertion order (not canonical).
    for invoice_id, text in _rows(journal):
        body = json.loads(text)
        order = ["id", "request_id", "status", "mode"] + [k for k in body if k not in ("id", "request_id", "status", "mode")]
        _rewrite(journal, invoice_id, json.dumps({k: body[k] for k in order}, ensure_ascii=False,
                                                 separators=(",", ":")))
    full = _count_full_checks(monkeypatch)
    report = _verify(journal)
    assert report.ok and report.checked == 6
    assert len(full) == 6


def test_an_altered_canonical_invoice_is_named(journal):
    rows = _rows(journal)
    invoice_id, text = rows[2]
    _rewrite(journal, invoice_id, text.replace('"name":"Jan"', '"name":"Jon"'))
    report = _verify(journal, stop_at_first=False)
    assert not report.ok
    assert invoice_id in str(report.faults[0]) and "chain hash" in str(report.faults[0])


def test_a_re_hashed_tip_is_caught_by_its_signature(journal):
    # Whoever alters the last invoice and fixes its chain hash everywhere still cannot sign.
    invoice_id, text = _rows(journal)[-1]
    body = json.loads(text)
    body["totals"]["total"] = "1.00"
    body["chain"]["hash"] = chain_hash(body)
    _rewrite(journal, invoice_id, canonical_bytes(body).decode("utf-8"), hash=body["chain"]["hash"])
    conn = sqlite3.connect(journal.data_dir / "agent.db")
    conn.execute("UPDATE chains SET last_hash = ?", (body["chain"]["hash"],))
    conn.commit()
    conn.close()
    report = _verify(journal, stop_at_first=False)
    assert [f.where.split(" ")[1] for f in report.faults] == [invoice_id]
    assert "signature does not match" in report.faults[0].problem


def test_a_forged_security_object_is_not_taken_for_the_real_one(journal):
    # A second "security" member elsewhere in the text must not let the stored-form check pass.
    invoice_id, text = _rows(journal)[1]
    body = json.loads(text)
    body["comments"] = {"security": body["security"]}
    body["chain"]["hash"] = chain_hash(body)
    forged = canonical_bytes(body).decode("utf-8")
    _rewrite(journal, invoice_id, forged, hash=body["chain"]["hash"])
    report = _verify(journal, stop_at_first=False)
    assert not report.ok
    assert invoice_id in str(report.faults[0])
