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


CLOUD_UNIT = UNIT.parent / "stalela-cloud.service"


def _cloud_unit():
    parser = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    parser.optionxform = str
    parser.read(CLOUD_UNIT)
    return parser


def test_cloud_unit_is_hardened_like_the_agents():
    svc = _cloud_unit()["Service"]
    agent = _unit()["Service"]
    for key in ("NoNewPrivileges", "ProtectSystem", "ProtectHome", "PrivateTmp", "RestrictSUIDSGID",
                "LockPersonality", "CapabilityBoundingSet", "UMask", "StateDirectoryMode"):
        assert svc[key] == agent[key], key
    assert svc["User"] == "stalela-cloud" and svc["ReadWritePaths"] == "/var/lib/stalela-cloud"
    assert "--data /var/lib/stalela-cloud" in svc["ExecStart"] and "--host 127.0.0.1" in svc["ExecStart"]


def test_cloud_unit_keeps_the_database_url_out_of_the_unit():
    svc = _cloud_unit()["Service"]
    assert svc["LoadCredential"].startswith("database-url:")
    assert "postgresql://" not in CLOUD_UNIT.read_text()


def test_cloud_unit_reads_its_configuration_file():
    svc = _cloud_unit()["Service"]
    assert svc["Environment"] == "STALELA_CLOUD_CONFIG=/etc/stalela/cloud.toml"
    # The port and the rest come from the file: the command line pins only what the hardening
    # and the TLS proxy design require.
    assert "--port" not in svc["ExecStart"]
