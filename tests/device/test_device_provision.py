"""`stalela device provision` against the real cloud process and a simulated MCF on a pty."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import serial

from tests.device.device_support import MID, SimDevice
from tests.support import NIF, ROOT, CloudProcess, EnrolledAgent, python_path


def provision(data, port, token: str = "") -> subprocess.CompletedProcess:
    # The operator's provisioning token comes from the environment here (`--token` works too).
    return subprocess.run([sys.executable, "-m", "agent", "device", "provision", "--data", str(data),
                           "--port", str(port)], capture_output=True, text=True, cwd=ROOT,
                          env=dict(os.environ, PYTHONPATH=python_path(), STALELA_PROVISIONING_TOKEN=token), timeout=60)


@pytest.fixture
def cloud_agent(tmp_path):
    cloud = CloudProcess(tmp_path / "cloud")
    token = cloud.add_outlet()
    cloud.start()
    agent = EnrolledAgent(tmp_path / "agent", cloud, token)
    yield cloud, agent
    cloud.stop()


def provisioning_token(cloud, agent) -> str:
    """What the operator hands the technician: a token that binds one MCF to this outlet."""
    return cloud.cli("devices", "token", "--outlet", agent.outlet).split()[0]


def test_provision_binds_the_mid_to_the_outlet(tmp_path, cloud_agent):
    cloud, agent = cloud_agent
    sim = SimDevice(tmp_path / "sim")
    token = provisioning_token(cloud, agent)
    try:
        # The agent's own cloud token cannot bind a device: only the operator can.
        refused = provision(agent.data_dir, sim.link_path, agent.cloud_token)
        assert refused.returncode != 0 and "refused the device (403)" in refused.stderr, refused.stderr
        assert cloud.get(f"/v1/outlets/{agent.outlet}/devices", cloud.admin_token())["devices"] == []
        res = provision(agent.data_dir, sim.link_path, token)
        assert res.returncode == 0, res.stdout + res.stderr
        assert f"device {MID} provisioned for outlet {agent.outlet}" in res.stdout
        devices = cloud.get(f"/v1/outlets/{agent.outlet}/devices", cloud.admin_token())["devices"]
        assert [d["mid"] for d in devices] == [MID]
        assert devices[0]["nif"] == NIF and devices[0]["bound_by"] == "provisioning-token"
        again = provision(agent.data_dir, sim.link_path, token)
        assert again.returncode == 0 and "refreshed" in again.stdout, again.stdout + again.stderr
        # The port held by another process: a clear message with the fix.
        with serial.Serial(str(sim.link_path), exclusive=True):
            busy = provision(agent.data_dir, sim.link_path, token)
        assert busy.returncode != 0 and "in use by another process" in busy.stderr, busy.stderr
    finally:
        sim.stop()


def test_provision_refuses_a_device_of_another_taxpayer(tmp_path, cloud_agent):
    cloud, agent = cloud_agent
    sim = SimDevice(tmp_path / "sim", nif="B7654321C", mid="SIM0000099-1")
    try:
        res = provision(agent.data_dir, sim.link_path, provisioning_token(cloud, agent))
        assert res.returncode != 0
        assert "refused" in res.stderr and "B7654321C" in res.stderr and NIF in res.stderr, res.stderr
        assert cloud.get(f"/v1/outlets/{agent.outlet}/devices", cloud.admin_token())["devices"] == []
    finally:
        sim.stop()


def test_provision_without_a_device_says_what_to_do(tmp_path, cloud_agent):
    cloud, agent = cloud_agent
    res = provision(agent.data_dir, tmp_path / "ttyNOPE", provisioning_token(cloud, agent))
    assert res.returncode != 0 and "no MCF at" in res.stderr and "device scan" in res.stderr, res.stderr


def test_provision_without_a_token_says_where_to_get_one(tmp_path, cloud_agent):
    _, agent = cloud_agent
    res = subprocess.run([sys.executable, "-m", "agent", "device", "provision", "--data", str(agent.data_dir),
                          "--port", str(tmp_path / "ttyNOPE")], capture_output=True, text=True, cwd=ROOT,
                         env={k: v for k, v in dict(os.environ, PYTHONPATH=python_path()).items()
                              if k != "STALELA_PROVISIONING_TOKEN"}, timeout=60)
    assert res.returncode != 0 and "--token" in res.stderr and "Traceback" not in res.stderr, res.stderr
