"""Device-mode test parts: a real simulated MCF on a real pseudo-terminal, and an agent daemon
(subprocess) configured to seal with it, delegated as the fallback."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from agent.config import write_default_config
from simulator.engine import MCFEngine
from simulator.pty_link import PtyLink
from simulator.state import FiscalState
from tests.support import NIF, AgentHarness, free_port

MID = "SIM0000042-1"
TAXPAYER = {"I0": "TEST SARL", "I1": "AV. DU COMMERCE 1", "I2": "KINSHASA", "I3": "0990000000",
            "I4": "caisse@test.cd"}


class SimDevice:
    """MCFEngine + PtyLink, in the test process; the agent opens the pty's symlink."""

    def __init__(self, folder: Path, *, nif: str = NIF, mid: str = MID, rates: dict | None = None,
                 wire_timing: bool = False, time_zone: str = "Africa/Kinshasa") -> None:
        from simulator.device import DeviceOptions

        folder.mkdir(parents=True, exist_ok=True)
        self.state_path = folder / "state.json"
        self.engine = MCFEngine(self.state_path, options=DeviceOptions(wire_timing=wire_timing),
                                provision=FiscalState.new(mid=mid, nif=nif, taxpayer=TAXPAYER, rates=rates,
                                                          time_zone=time_zone))
        self.link_path = folder / "ttyMCF"
        self.pty = PtyLink(self.engine, self.link_path)
        self.pty.start()

    @property
    def faults(self):
        return self.engine.faults

    @property
    def tc(self) -> int:
        return self.engine.state.tc

    def journal_fns(self) -> list[str]:
        return [e.fn for e in self.engine.store.entries(self.engine.state)]

    def unplug(self) -> None:
        self.faults.unplug()
        deadline = time.monotonic() + 5
        while self.link_path.is_symlink() and time.monotonic() < deadline:
            time.sleep(0.02)

    def replug(self) -> None:
        self.faults.replug()
        deadline = time.monotonic() + 5
        while not self.link_path.is_symlink() and time.monotonic() < deadline:
            time.sleep(0.02)

    def wait_answer_read(self, timeout: float = 10.0) -> None:
        """After a hold was released: its answer went out on the pty and the SFE has read it all."""
        wait_for(lambda: not self.faults.is_holding(), timeout)
        rounds = self.pty.rounds
        wait_for(lambda: self.pty.rounds > rounds, timeout)  # what the release produced is written
        wait_for(lambda: self.pty.unread() == 0, timeout)

    def stop(self) -> None:
        self.pty.stop()


def device_agent(folder: Path, sim: SimDevice, *, policy=("device", "delegated"), credential: bool = True,
                 **extra: Any) -> AgentHarness:
    h = AgentHarness(folder)
    write_default_config(folder, agent__port=h.port, cloud__url=f"http://127.0.0.1:{free_port()}",
                         credential__check_interval=3600, signer__policy=list(policy),
                         device__url=str(sim.link_path), **extra)
    if credential:
        h.add_credential(h.credential(1, 100))
    return h


def wait_for(predicate, timeout: float = 10.0, step: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    raise AssertionError("condition not met in time")


def device_health(h: AgentHarness) -> dict:
    status, body, _ = h.get("/v1/health")
    assert status == 200, body
    return body
