"""The technician's path: provision --write-config leaves an absolute [device] url; the udev rule
makes the /dev/stalela-mcf link the docs use."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from agent.config import load_config
from tests.device.device_support import MID, SimDevice
from tests.support import ROOT, CloudProcess, EnrolledAgent, python_path


@pytest.fixture
def cloud_agent(tmp_path):
    cloud = CloudProcess(tmp_path / "cloud")
    token = cloud.add_outlet()
    cloud.start()
    agent = EnrolledAgent(tmp_path / "agent", cloud, token)
    yield cloud, agent
    cloud.stop()


def test_provision_write_config_sets_an_absolute_url(tmp_path, cloud_agent):
    cloud, agent = cloud_agent
    # Binding a device takes the operator: the provisioning token it issued for this outlet.
    token = cloud.cli("devices", "token", "--outlet", agent.outlet).split()[0]
    sim = SimDevice(tmp_path / "bench" / "sim")
    try:
        before = (agent.data_dir / "config.toml").read_text()
        # The technician's shell is in tmp_path/bench; the agent runs from elsewhere.
        res = subprocess.run([sys.executable, "-m", "agent", "device", "provision", "--data", str(agent.data_dir),
                              "--port", "sim/ttyMCF", "--write-config"], capture_output=True, text=True,
                             cwd=tmp_path / "bench", timeout=60,
                             env=dict(os.environ, PYTHONPATH=python_path(), STALELA_PROVISIONING_TOKEN=token))
        assert res.returncode == 0, res.stdout + res.stderr
        assert f"device {MID} provisioned" in res.stdout
        url = load_config(agent.data_dir).device_url
        assert url == str(tmp_path / "bench" / "sim" / "ttyMCF")  # absolute, and the link itself (not resolved)
        after = (agent.data_dir / "config.toml").read_text()
        # Only that line changed: the rest of the file (comments, other keys) is as it was.
        changed = [(a, b) for a, b in zip(before.splitlines(), after.splitlines()) if a != b]
        assert changed == [('url = ""', f'url = "{url}"')]
    finally:
        sim.stop()


def test_the_udev_link_is_the_name_the_docs_use():
    rules = (ROOT / "systemd" / "60-stalela-mcf.rules").read_text()
    tty_rules = [line for line in rules.splitlines() if line.startswith('SUBSYSTEM=="tty"')]
    assert tty_rules and all('SYMLINK+="stalela-mcf"' in line for line in tty_rules)
    # Every example tty rule (commented, to enable per device) makes the same link.
    examples = [line for line in rules.splitlines() if re.match(r'#\s*SUBSYSTEM=="tty"', line)]
    assert examples and all('SYMLINK+="stalela-mcf"' in line for line in examples)
    ops = (ROOT / "docs" / "operations.md").read_text()
    assert "device provision --data /var/lib/stalela --port /dev/stalela-mcf" in ops
    from agent.cli.main import cli

    provision_help = cli.get_command(None, "device").commands["provision"].help
    assert "--port /dev/stalela-mcf" in provision_help
