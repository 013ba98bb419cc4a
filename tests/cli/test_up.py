"""`stalela up` twice: the second run is refused before it touches anything, and the first demo
(its processes, its files, the simulator's ttyMCF link) carries on. The demo key's label is the
one `agent keys list` shows."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request

from tests.support import free_port, python_path


def _env() -> dict:
    return dict(os.environ, PYTHONPATH=python_path())  # at call time: a pinned clock's too


def up(data, cloud_port, port) -> list[str]:
    return [sys.executable, "-m", "agent", "up", "--data", str(data), "--cloud-port", str(cloud_port),
            "--port", str(port)]


def wait_for_banner(proc) -> list[str]:
    lines = []
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if line.startswith("Stop with Ctrl-C"):
            return lines
    raise AssertionError("".join(lines) + (proc.stderr.read() if proc.poll() is not None else ""))


def health(port) -> dict:
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/health", timeout=5) as resp:
                return json.loads(resp.read())
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def demo_files(data) -> list[str]:
    # The running demo's own journal side files (-wal, -shm) and logs come and go by themselves.
    return sorted(str(p.relative_to(data)) for p in data.rglob("*")
                  if "log" not in p.name and not p.name.endswith(("-wal", "-shm", "-journal")))


def test_second_up_is_refused_and_the_first_keeps_running(tmp_path):
    data, cloud_port, port = tmp_path / "demo", free_port(), free_port()
    first = subprocess.Popen(up(data, cloud_port, port), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env=_env(), cwd=tmp_path)
    try:
        banner = "".join(wait_for_banner(first))
        label = re.search(r"API key \((.+?)\): (stk_\S+)", banner)
        assert label and label.group(1) == "POS-01", banner
        link = data / "sim" / "ttyMCF"
        target = os.readlink(link)
        files = demo_files(data)
        assert health(port)["status"] in ("ok", "degraded")

        # The same folder and ports, while the first runs.
        second = subprocess.run(up(data, cloud_port, port), capture_output=True, text=True, env=_env(),
                                cwd=tmp_path, timeout=60)
        assert second.returncode == 1, second.stdout + second.stderr
        assert "already running" in second.stderr and str(first.pid) in second.stderr
        assert "Traceback" not in second.stderr and "Stalela Edge is up" not in second.stdout
        # Another folder, the same ports: refused too, and that folder is not even created.
        other = subprocess.run(up(tmp_path / "demo2", cloud_port, port), capture_output=True, text=True,
                               env=_env(), cwd=tmp_path, timeout=60)
        assert other.returncode == 1 and "already in use" in other.stderr, other.stderr
        assert not (tmp_path / "demo2").exists()

        # The first demo is untouched: same device link to the same pty, same files, still sealing.
        assert link.is_symlink() and os.readlink(link) == target
        assert demo_files(data) == files
        assert first.poll() is None and health(port)["status"] in ("ok", "degraded")

        # The label printed is the name the key is listed under.
        keys = subprocess.run([sys.executable, "-m", "agent", "agent", "keys", "list", "--data",
                               str(data / "agent"), "--json"], capture_output=True, text=True, env=_env(), timeout=60)
        assert [k["name"] for k in json.loads(keys.stdout)["keys"] if k["active"]] == ["POS-01"], keys.stdout
    finally:
        first.send_signal(signal.SIGINT)
        try:
            first.wait(30)
        except subprocess.TimeoutExpired:
            first.kill()
            first.wait()
    assert first.returncode == 0, first.stderr.read()
