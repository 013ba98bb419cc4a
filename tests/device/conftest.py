from __future__ import annotations

import pytest

from tests.device.device_support import SimDevice, device_agent


@pytest.fixture
def sim(tmp_path):
    device = SimDevice(tmp_path / "sim")
    yield device
    device.stop()


@pytest.fixture
def agent(tmp_path, sim):
    h = device_agent(tmp_path / "agent", sim)
    yield h
    h.stop()
