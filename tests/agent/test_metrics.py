"""The agent's /metrics gauges and the alert rules in docs/monitoring/ that read them."""
from __future__ import annotations

import importlib.metadata
import re
import shutil
import subprocess

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.support import ROOT, invoice

RULES = ROOT / "docs" / "monitoring" / "agent-alerts.yml"
RULE_TESTS = ROOT / "docs" / "monitoring" / "agent-alerts.test.yml"

# The gauges docs/api.md promises (besides the sealing counters and histogram).
GAUGES = ["stalela_health_state", "stalela_credential_numbers_remaining", "stalela_credential_seconds_left",
          "stalela_credential_ready", "stalela_device_configured", "stalela_device_up",
          "stalela_sync_pending", "stalela_sync_last_success_timestamp_seconds", "stalela_sync_quarantined",
          "stalela_build_info"]


@pytest.fixture
def agent(harness):
    harness.add_credential(harness.credential(1001, 1500))
    harness.start()
    return harness


def _samples(agent) -> dict[str, list]:
    status, body, headers = agent.get("/metrics", key=None)
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    out: dict[str, list] = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            out.setdefault(sample.name, []).append(sample)
    return out


def _value(samples, name: str, **labels) -> float:
    [match] = [s.value for s in samples[name] if all(s.labels.get(k) == v for k, v in labels.items())]
    return match


def test_each_gauge_is_exported_after_a_seal(agent):
    assert agent.post("/v1/invoices", invoice("R-1"))[0] == 201
    samples = _samples(agent)
    missing = [name for name in GAUGES if name not in samples]
    assert missing == []
    health = agent.get("/v1/health")[1]
    # One state gauge per colour, 1 for the current one only.
    states = {s.labels["state"]: s.value for s in samples["stalela_health_state"]}
    assert states == {c: (1.0 if c == health["state"] else 0.0) for c in ("green", "blue", "amber", "red")}
    assert _value(samples, "stalela_credential_numbers_remaining") == 499
    left = _value(samples, "stalela_credential_seconds_left")
    assert 0 < left <= 12 * 3600
    assert _value(samples, "stalela_credential_ready") == 0
    assert _value(samples, "stalela_device_configured") == 0 and _value(samples, "stalela_device_up") == 0
    assert _value(samples, "stalela_sync_pending") == 1
    assert _value(samples, "stalela_sync_last_success_timestamp_seconds") == 0  # the cloud was never reached
    assert _value(samples, "stalela_sync_quarantined") == 0
    version = importlib.metadata.version("stalela-edge")
    assert _value(samples, "stalela_build_info", version=version) == 1


def test_blocked_outlet_shows_red(harness):
    harness.add_credential(harness.credential(1001, 1001))  # used up by the first sale
    harness.start()
    harness.post("/v1/invoices", invoice("R-1"))
    samples = _samples(harness)
    assert _value(samples, "stalela_health_state", state="red") == 1
    assert _value(samples, "stalela_health_state", state="amber") == 0
    assert _value(samples, "stalela_credential_numbers_remaining") == 0


def _rules() -> list[dict]:
    doc = yaml.safe_load(RULES.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def test_alert_rules_parse_and_cover_the_agent_alerts():
    rules = _rules()
    names = {r["alert"] for r in rules}
    assert {"StalelaOutletBlocked", "StalelaCredentialNumbersLow", "StalelaSyncLagging",
            "StalelaDeviceDown"} <= names
    for rule in rules:
        assert isinstance(rule["expr"], str) and rule["expr"].strip()
        assert rule["labels"]["severity"] in ("critical", "warning")
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
        assert re.fullmatch(r"\d+[smh]", rule["for"])


def test_every_metric_a_rule_names_is_exported(agent):
    agent.post("/v1/invoices", invoice("R-1"))
    exported = set(_samples(agent))
    named = {m for rule in _rules() for m in re.findall(r"\bstalela_[a-z0-9_]+", rule["expr"])}
    assert named  # the regex did find the rules' metrics
    assert sorted(named - exported) == []


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed (apt-get install prometheus)")
def test_promtool_checks_and_unit_tests_the_rules():
    """Prometheus' own parser, and the rules' unit tests (docs/monitoring/agent-alerts.test.yml)."""
    for args in (["check", "rules", RULES.name], ["test", "rules", RULE_TESTS.name]):
        res = subprocess.run(["promtool", *args], cwd=RULES.parent, capture_output=True, text=True)
        assert res.returncode == 0, res.stdout + res.stderr


def test_a_ready_successor_is_counted(harness):
    harness.add_credential(harness.credential(1001, 1500))
    harness.add_credential(harness.credential(1501, 2000))
    harness.start()
    harness.post("/v1/invoices", invoice("R-1"))
    samples = _samples(harness)
    assert _value(samples, "stalela_credential_ready") == 1
    assert _value(samples, "stalela_credential_numbers_remaining") == 999


def test_device_gauges_follow_the_device(tmp_path):
    from tests.device.device_support import SimDevice, device_agent, wait_for

    sim = SimDevice(tmp_path / "sim")
    agent = device_agent(tmp_path / "agent", sim)
    try:
        agent.start()
        assert agent.post("/v1/invoices", invoice("d-1"))[1]["mode"] == "device"
        samples = _samples(agent)
        assert _value(samples, "stalela_device_configured") == 1 and _value(samples, "stalela_device_up") == 1
        sim.unplug()
        agent.post("/v1/invoices", invoice("d-2"))
        wait_for(lambda: _value(_samples(agent), "stalela_device_up") == 0)
        assert _value(_samples(agent), "stalela_device_configured") == 1
    finally:
        agent.stop()
        sim.stop()
