"""The fiscal memory survives restarts and power cuts, and is never torn."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from simulator.engine import MCFEngine
from simulator.state import FiscalState, FiscalStore, StateError, atomic_write

from sim_helpers import Host


def test_restart_continues_counters_and_last_invoice(state_path: Path) -> None:
    host = Host(MCFEngine(state_path))
    host.sell("F1")
    sig2 = host.sell("F2")[7]
    restarted = MCFEngine(state_path)
    assert restarted.state.tc == 2 and restarted.state.counters["FV"] == 2
    assert restarted.state.last_invoice is not None and restarted.state.last_invoice.sig == sig2
    assert Host(restarted).sell("F3")[:2] == ["3", "3"]
    assert [e.fn for e in restarted.store.entries(restarted.state)] == ["F1", "F2", "F3"]


def test_restart_keeps_identity_and_secret(state_path: Path) -> None:
    first = MCFEngine(state_path, provision=FiscalState.new(mid="XX01710090-1", nif="A9000011T"))
    again = MCFEngine(state_path, provision=FiscalState.new(mid="OTHER00000-1"))  # ignored: exists
    assert (again.state.mid, again.state.nif, again.state.secret) == (
        "XX01710090-1", "A9000011T", first.state.secret,
    )


def test_an_open_invoice_does_not_survive_a_power_cut(state_path: Path) -> None:
    engine = MCFEngine(state_path)
    host = Host(engine)
    host.open_invoice("F1")
    engine.power_cycle()
    assert not host.send(0xC1).status.invoice_open
    assert host.send(0x33).text == "E:AUCUNE FACTURE OUVERTE"


def test_a_crash_during_the_state_write_leaves_the_old_state(state_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    engine = MCFEngine(state_path)
    host = Host(engine)
    host.sell("F1")
    before = state_path.read_bytes()

    def power_cut(src: str, dst: str) -> None:
        # The temp file is written and synced, then the power goes before the rename.
        raise OSError("power cut")

    monkeypatch.setattr(os, "replace", power_cut)
    host.open_invoice("F2")
    host.item("ARTICLE", "B", "16.00", "100", "100")
    answer = host.send(0x38, "100.00,13.79")
    assert answer.text == "E:ERREUR D'ECRITURE DANS LA MEMOIRE FISCALE"
    assert answer.status.memory_write_error
    monkeypatch.undo()
    assert state_path.read_bytes() == before
    reloaded = MCFEngine(state_path)
    assert reloaded.state.tc == 1
    # The journal line appended before the failed commit is not part of the memory.
    assert [e.fn for e in reloaded.store.entries(reloaded.state)] == ["F1"]
    assert not list(state_path.parent.glob(f".{state_path.name}.*.tmp"))
    assert Host(reloaded).sell("F2")[:2] == ["2", "2"]


def test_a_torn_temp_file_is_never_read(state_path: Path) -> None:
    MCFEngine(state_path)
    good = state_path.read_bytes()
    torn = state_path.parent / f".{state_path.name}.abc123.tmp"
    torn.write_bytes(good[: len(good) // 2])
    state = FiscalStore(state_path).load()
    assert state.tc == 0
    assert not torn.exists()


def test_a_torn_journal_tail_is_cut_back_to_the_commit(state_path: Path) -> None:
    host = Host(MCFEngine(state_path))
    host.sell("F1")
    journal = state_path.with_name(state_path.name + ".journal")
    committed = journal.read_bytes()
    with open(journal, "ab") as handle:
        handle.write(b'{"fn": "F2", "ft": "FV", "half a li')
    engine = MCFEngine(state_path)
    assert journal.read_bytes() == committed
    assert [e.fn for e in engine.store.entries(engine.state)] == ["F1"]


def test_a_journal_shorter_than_committed_is_refused(state_path: Path) -> None:
    Host(MCFEngine(state_path)).sell("F1")
    journal = state_path.with_name(state_path.name + ".journal")
    journal.write_bytes(journal.read_bytes()[:10])
    with pytest.raises(StateError, match="shorter"):
        MCFEngine(state_path)


def test_atomic_write_replaces_whole_file(tmp_path: Path) -> None:
    target = tmp_path / "f.json"
    atomic_write(target, b"old")
    atomic_write(target, b"new content")
    assert target.read_bytes() == b"new content"
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"]


def test_unreadable_state_is_a_clear_error(state_path: Path) -> None:
    state_path.write_text("{not json")
    with pytest.raises(StateError, match="cannot read"):
        FiscalStore(state_path).load()
    state_path.write_text(json.dumps({"format": 99}))
    with pytest.raises(StateError, match="format"):
        FiscalStore(state_path).load()


def test_provisioning_checks_the_mid(tmp_path: Path) -> None:
    with pytest.raises(StateError, match="NID-ACNT"):
        FiscalState.new(mid="not a mid")
