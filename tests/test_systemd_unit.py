"""The unit file says what docs/operations.md promises (parsed, not eyeballed)."""
from __future__ import annotations

import configparser
from pathlib import Path

UNIT = Path(__file__).resolve().parent.parent / "systemd" / "stalela-agent.service"


def _unit():
    parser = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    parser.optionxform = str
    parser.read(UNIT)
    return parser


def test_notify_watchdog_restart():
    svc = _unit()["Service"]
    assert svc["Type"] == "notify"
    assert svc["WatchdogSec"].endswith("s")
    assert svc["Restart"] == "on-failure"


def test_hardening():
    svc = _unit()["Service"]
    assert svc["User"] == "stalela"
    assert svc["ProtectSystem"] == "strict"
    assert svc["ReadWritePaths"] == "/var/lib/stalela"
    assert svc["NoNewPrivileges"] == "yes"
    assert "--data /var/lib/stalela" in svc["ExecStart"]
