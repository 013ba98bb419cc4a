"""The agent shows what the DGI answered for its invoice (`dgi` in GET /v1/invoices/{id}),
through the cloud that forwarded it; the outlet's agent reads its own outlet's forwarding only."""
from __future__ import annotations

import time
import urllib.error

import pytest

from tests.forwarding.fwd_support import EmcfSim, stalela
from tests.support import NIF, OUTLET, CloudProcess, EnrolledAgent, invoice


@pytest.fixture
def world(tmp_path):
    sim = EmcfSim(tmp_path / "emcf.sqlite3").start()
    cloud = CloudProcess(tmp_path / "cloud")
    agent = None
    try:
        cloud.start(30, "--workers", "0", "--dgi-url", sim.url, "--dgi-poll", "0.2", "--dgi-lease", "3s")
        agent = EnrolledAgent(tmp_path / "agent", cloud, cloud.add_outlet(), sync_interval=0.2)
        agent.start()
        yield sim, cloud, agent
    finally:
        if agent is not None:
            agent.stop()
        cloud.stop()
        sim.stop()


def _dgi(agent, invoice_id: str) -> dict:
    status, body, _ = agent.get(f"/v1/invoices/{invoice_id}")
    assert status == 200, body
    return body["dgi"]


def test_the_agent_shows_the_dgi_answer_once_the_cloud_forwarded_its_invoice(world):
    sim, cloud, agent = world
    bodies = []
    for n in range(3):
        status, body, _ = agent.post("/v1/invoices", invoice(f"DGI-{n}", n_items=3))
        assert status == 201, body
        bodies.append(body)
    # Without a DGI token for the outlet nothing is forwarded: the agent says what it knows.
    assert _dgi(agent, bodies[0]["id"])["state"] in ("not_uploaded", "queued")
    stalela("cloud", "dgi", "token", "--data", str(cloud.data_dir), "--outlet", OUTLET, "--token-file", "-",
            stdin=sim.token_by_cli(NIF, bodies[0]["isf"]))
    deadline = time.monotonic() + 60
    while _dgi(agent, bodies[-1]["id"])["state"] != "normalized":
        assert time.monotonic() < deadline, _dgi(agent, bodies[-1]["id"])
        time.sleep(0.3)
    at_dgi = {c["rn"]: c for c in sim.confirmed()}
    for body in bodies:
        dgi = _dgi(agent, body["id"])
        assert dgi["state"] == "normalized"
        assert dgi["code"] == at_dgi[body["id"]]["code"] and len(dgi["code"]) == 24
        assert dgi["counters"] == at_dgi[body["id"]]["counters"]
        assert dgi["qr_code"].startswith(f"RDCDEF01;{at_dgi[body['id']]['nim']};{dgi['code']};{NIF};")
    # The outlet's agent reads its outlet's forwarding status, never another outlet's.
    status = cloud.get(f"/v1/outlets/{OUTLET}/dgi", agent.cloud_token)
    assert status["counts"] == {"normalized": 3}
    cloud.add_outlet("KIN-002")
    with pytest.raises(urllib.error.HTTPError) as caught:
        cloud.get("/v1/outlets/KIN-002/dgi", agent.cloud_token)
    assert caught.value.code == 404
    with pytest.raises(urllib.error.HTTPError) as caught:
        cloud.get(f"/v1/outlets/{OUTLET}/invoices/NO-SUCH-ID/dgi", agent.cloud_token)
    assert caught.value.code == 404
