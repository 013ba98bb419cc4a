"""`--json` on the status-like commands: one JSON document on stdout, with the fields docs/cli.md
documents (checked here field by field, so a renamed field fails)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.support import ROOT, invoice, python_path


def stalela(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "agent", *args], capture_output=True, text=True, cwd=ROOT,
                          env=dict(os.environ, PYTHONPATH=python_path()), timeout=60)


def as_json(*args, code=0) -> dict:
    res = stalela(*args, "--json")
    assert res.returncode == code, res.stdout + res.stderr
    return json.loads(res.stdout)


def test_agent_folder_commands(harness):
    data = ("--data", str(harness.data_dir))
    harness.add_credential(harness.credential(1, 10))
    harness.start()
    for n in range(3):
        assert harness.post("/v1/invoices", invoice(f"J-{n}"))[0] in (200, 201)
    harness.stop()

    cred = as_json("credential", "status", *data)
    assert set(cred) == {"data_dir", "can_seal", "reason", "remaining", "active", "ready"}
    assert cred["can_seal"] is True and cred["reason"] is None and cred["remaining"] == 7
    assert set(cred["active"]) == {"id", "block", "next_number", "remaining", "not_before", "not_after",
                                   "seconds_left"}
    assert cred["active"]["block"] == [1, 10] and cred["active"]["next_number"] == 4

    sync = as_json("sync", "status", *data)
    assert sync == {"data_dir": str(harness.data_dir), "pending": 3, "oldest_pending": sync["oldest_pending"],
                    "synced": 0, "quarantined": 0, "quarantine": []}
    assert sync["oldest_pending"]

    verified = as_json("verify", *data)
    assert verified["ok"] is True and verified["source"] == "journal" and verified["invoices"] == 3
    assert verified["faults"] == [] and sum(verified["chains"].values()) == 3

    keys = as_json("agent", "keys", "list", *data)
    assert [(k["name"], k["active"], k["revoked_at"]) for k in keys["keys"]] == [("POS-01", True, None)]
    assert set(keys["keys"][0]) == {"name", "api", "created_at", "revoked_at", "active"}
    assert "key" not in json.dumps(keys["keys"][0]).replace('"key', "")  # no key material, not even a hash


def test_verify_json_names_the_fault_and_exits_1(harness):
    harness.add_credential(harness.credential(1, 10))
    harness.start()
    assert harness.post("/v1/invoices", invoice("F-1"))[0] in (200, 201)
    harness.stop()
    conn = harness.db()
    conn.execute("UPDATE invoices SET body = x'01ff00'")  # bytes that decode to no invoice
    conn.close()
    body = as_json("verify", "--data", str(harness.data_dir), code=1)
    assert body["ok"] is False and body["faults"] and set(body["faults"][0]) == {"where", "problem"}


def test_device_scan_json_and_libusb_hint():
    body = as_json("device", "scan")
    assert set(body) == {"usb", "serial_ports"} and set(body["usb"]) == {"available", "error", "candidates"}
    for port in body["serial_ports"]:
        assert set(port) == {"device", "vid", "pid", "description", "mcf_id"}
    import usb.backend.libusb1

    if usb.backend.libusb1.get_backend() is None:  # this machine lacks libusb: the scan says how to fix it
        assert body["usb"]["available"] is False and "apt-get install libusb-1.0-0" in body["usb"]["error"]
        text = stalela("device", "scan")
        assert text.returncode == 0 and "apt-get install libusb-1.0-0" in text.stdout
    else:
        assert body["usb"]["available"] is True and body["usb"]["error"] is None


def test_device_selftest_json(tmp_path):
    from simulator.state import FiscalState, FiscalStore

    state = tmp_path / "mcf.json"
    FiscalStore(state).create(FiscalState.new(mid="SIM0000007-1", nif="A1234567B", taxpayer={}))
    body = as_json("device", "selftest", "--port", f"sim://{state}")
    assert body["ok"] is True and body["mid"] == "SIM0000007-1" and body["nif"] == "A1234567B"
    assert {c["level"] for c in body["checks"]} <= {"PASS", "WARN"}
    assert all(set(c) == {"level", "check"} for c in body["checks"])
    res = stalela("sim", "set-clock", "--state", str(state), "--unset")
    assert res.returncode == 0, res.stderr
    failed = as_json("device", "selftest", "--port", f"sim://{state}", code=1)
    assert failed["ok"] is False and any(c["level"] == "FAIL" and "clock" in c["check"] for c in failed["checks"])


def test_sim_status_json(tmp_path):
    from simulator.state import FiscalState, FiscalStore

    state = tmp_path / "mcf.json"
    FiscalStore(state).create(FiscalState.new(mid="SIM0000008-1", nif="A1234567B", taxpayer={}))
    body = as_json("sim", "status", "--state", str(state))
    assert set(body) == {"mid", "nif", "clock", "clock_set", "counters", "last_invoice", "memory", "dgi", "rates",
                         "status_bits"}
    assert body["mid"] == "SIM0000008-1" and body["last_invoice"] is None and body["counters"]["tc"] == 0
    assert set(body["memory"]) == {"records", "max_records", "left"} and body["clock_set"] is True
    stalela("sim", "set-clock", "--state", str(state), "--unset")
    assert as_json("sim", "status", "--state", str(state))["clock_set"] is False
