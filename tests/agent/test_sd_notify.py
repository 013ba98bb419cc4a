"""READY=1 and WATCHDOG=1 reach $NOTIFY_SOCKET from the real daemon (a real unix datagram socket)."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

from tests.support import python_path


def test_daemon_notifies_ready_and_pings_watchdog(harness, tmp_path):
    harness.add_credential(harness.credential(1, 10))
    sock_path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(sock_path)
    sock.settimeout(20)
    env = dict(os.environ, PYTHONPATH=python_path(), NOTIFY_SOCKET=sock_path, WATCHDOG_USEC="400000")
    proc = subprocess.Popen([sys.executable, "-m", "agent", "agent", "run", "--data", str(harness.data_dir)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        env["WATCHDOG_PID"] = str(proc.pid)
        messages = []
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not any("WATCHDOG=1" in m for m in messages):
            messages.append(sock.recv(4096).decode())
        assert any("READY=1" in m for m in messages)
        assert any("WATCHDOG=1" in m for m in messages)
    finally:
        proc.terminate()
        proc.wait(10)
        sock.close()
    assert proc.returncode == 0
