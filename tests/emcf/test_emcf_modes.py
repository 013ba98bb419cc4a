"""The e-MCF API with each signer behind it: the MCF device (simulated, on a real pty), the cloud
(a real cloud process), and the delegated credential when either is gone."""
from __future__ import annotations

import pytest

from fiscal.seal import verify_qr
from tests.device.device_support import MID, SimDevice, device_agent, wait_for
from tests.emcf.emcf_client import EmcfClient, invoice
from tests.support import NIF, EnrolledAgent


@pytest.fixture
def sim(tmp_path):
    device = SimDevice(tmp_path / "sim")
    yield device
    device.stop()


def test_device_mode_answers_the_mcf_elements(tmp_path, sim):
    agent = device_agent(tmp_path / "agent", sim)
    try:
        agent.start()
        client = EmcfClient(agent.url, agent.api_key)
        wait_for(lambda: client.status()["nim"] == MID)
        phase1 = client.submit(invoice("D-1", nif=NIF))
        assert sim.tc == 0  # phase 1 sends nothing to the device
        answer = client.confirm(phase1["uid"], phase1["total"], phase1["vtotal"])
        last = sim.engine.state.last_invoice
        assert answer["nim"] == MID and answer["codeDEFDGI"] == last.sig and answer["counters"] == "1/1 FV"
        assert answer["qrCode"] == f"RDCDEF01;{MID};{last.sig};{NIF};{last.dt}"
        assert client.confirm(phase1["uid"], phase1["total"], phase1["vtotal"]) == answer
        assert sim.tc == 1
        # The device unplugged: the same integration keeps normalizing (delegated, offline).
        sim.unplug()
        offline = client.normalize(invoice("D-2", nif=NIF), 4064.0, 64.0)
        assert offline["nim"] == "DC-KIN-001-1" and offline["qrCode"].startswith("RDCSTL01;DC-KIN-001-1;")
        assert sim.tc == 1
        assert agent.verify().returncode == 0
    finally:
        agent.stop()


def test_cloud_mode_then_offline(tmp_path, cloud):
    agent = EnrolledAgent(tmp_path / "agent", cloud, cloud.add_outlet(), policy=("cloud", "delegated"))
    try:
        agent.start()
        client = EmcfClient(agent.url, agent.api_key)
        online = client.normalize(invoice("C-1", nif=NIF), 4064.0, 64.0)
        assert online["nim"] == f"CLOUD-{agent.outlet}"
        assert verify_qr(online["qrCode"], agent.issuer_pub).valid
        conn = agent.db()
        try:
            mode, code = conn.execute("SELECT mode, code FROM invoices").fetchone()
        finally:
            conn.close()
        assert mode == "cloud" and code == online["codeDEFDGI"]
        # The cloud gone: phase 1 and the confirm still work, sealed with the delegated credential.
        phase1 = client.submit(invoice("C-2", nif=NIF))
        cloud.stop()
        offline = client.confirm(phase1["uid"], 4064.0, 64.0)
        assert offline["nim"].startswith("DC-") and verify_qr(offline["qrCode"], agent.issuer_pub).valid
        assert offline["codeDEFDGI"] != online["codeDEFDGI"]
    finally:
        agent.stop()
