"""Shared fixtures: real data folders, real agent processes on 127.0.0.1, real credentials.

The cloud's issuer role is played here by a test issuer key that signs real credentials with
the same code the cloud uses (`DelegatedCredential.issue`), so agent tests do not need a cloud
process; the end-to-end tests start the real cloud.
"""
from __future__ import annotations

import pytest

from tests.support import AgentHarness


@pytest.fixture
def harness(tmp_path):
    h = AgentHarness(tmp_path / "agent")
    yield h
    h.stop()
