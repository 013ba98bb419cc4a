"""Stored bodies (agent/store/bodies.py): compressed with a frozen dictionary, read back exactly."""
from __future__ import annotations

import hashlib
import json
import sqlite3

import pytest
from hypothesis import given, settings, strategies as st

from agent.store import bodies
from tests.support import invoice


def test_the_dictionary_never_changes():
    # Stored invoices depend on it byte for byte: a new dictionary needs a new format byte.
    assert hashlib.sha256(bodies._DICTIONARY_V1).hexdigest() == \
        "b5921aaca6f3d719af6f01b726366919de98353b105bfac489cf7c0f0356aa87"


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_any_text_round_trips(text):
    assert bodies.unpack(bodies.pack(text)) == text


def test_legacy_text_is_read_as_is_and_damage_is_refused():
    assert bodies.unpack('{"a":1}') == '{"a":1}'
    packed = bytearray(bodies.pack(json.dumps(invoice("B-1")) * 3))
    with pytest.raises(bodies.UnreadableBody):
        bodies.unpack(bytes([9]) + bytes(packed[1:]))  # unknown format byte
    with pytest.raises(bodies.UnreadableBody):
        bodies.unpack(bytes(packed[:len(packed) // 2]))  # truncated


def test_a_sealed_invoice_shrinks_to_a_third(harness):
    harness.add_credential(harness.credential(1, 10))
    harness.start()
    sealed = harness.post("/v1/invoices", invoice("B-2", n_items=10))[1]
    conn = harness.db()
    stored = conn.execute("SELECT body FROM invoices WHERE id = ?", (sealed["id"],)).fetchone()[0]
    conn.close()
    text = bodies.unpack(stored)
    assert json.loads(text) == {k: v for k, v in sealed.items() if k != "sync"}
    assert isinstance(stored, bytes) and len(stored) * 3 < len(text.encode())


def test_migration_fills_the_reference_of_credit_notes_stored_as_text(tmp_path, monkeypatch):
    # A journal from before compression: bodies as JSON text, credit-note references inside them.
    from agent.store import db as store
    db = tmp_path / "old.db"
    names = [name for name, _ in store.MIGRATIONS]
    monkeypatch.setattr(store, "MIGRATIONS", store.MIGRATIONS[:names.index("0008_compressed_bodies")])
    store.migrate(db)
    conn = store.connect(db)
    for i, (kind, ref) in enumerate([("FV", None), ("FA", {"nature": "COR", "code": "ABCDEFGHIJKLMNOPQRSTUVWX"})]):
        conn.execute("INSERT INTO invoices(id, request_id, request_hash, status, type, total, created_at, body)"
                     " VALUES (?, ?, 'h', 'sealed', ?, '10.00', 'now', ?)",
                     (f"id-{i}", f"r-{i}", kind, json.dumps({"type": kind, "reference": ref})))
    conn.close()
    monkeypatch.undo()
    applied = store.migrate(db)
    assert applied[0] == "0008_compressed_bodies"  # then any later ones, in order
    assert applied == [name for name, _ in store.MIGRATIONS[names.index("0008_compressed_bodies"):]]
    conn = store.connect(db)
    rows = dict(conn.execute("SELECT id, reference_code FROM invoices").fetchall())
    conn.close()
    assert rows == {"id-0": None, "id-1": "ABCDEFGHIJKLMNOPQRSTUVWX"}
