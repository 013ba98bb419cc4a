"""The README's quick start, as a new user runs it: `stalela up`, then the printed curl line."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

from tests.support import ROOT, free_port, python_path


def test_readme_names_the_two_commands_and_ci_runs_the_test_one():
    readme = (ROOT / "README.md").read_text()
    assert "./dev up" in readme and "./dev test" in readme
    assert "./dev test" in (ROOT / ".ci" / "run").read_text()


def test_up_prints_a_curl_that_seals(tmp_path):
    cloud_port, port = free_port(), free_port()
    env = dict(os.environ, PYTHONPATH=python_path())
    proc = subprocess.Popen([sys.executable, "-m", "agent", "up", "--data", str(tmp_path / "demo"),
                             "--cloud-port", str(cloud_port), "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    try:
        lines = []
        deadline = time.monotonic() + 60
        curl = None
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if line.strip().startswith("curl -s -X POST"):
                curl = line.strip()
                break
        assert curl, "".join(lines) + proc.stderr.read() if proc.poll() is not None else "".join(lines)
        assert re.search(r"API key \(POS-01\): stk_", "".join(lines))
        # Wait for the agent to answer, then paste the line into a shell, twice (new request ids).
        for _ in range(100):
            if subprocess.run(["curl", "-sf", f"http://127.0.0.1:{port}/v1/health"], capture_output=True).returncode == 0:
                break
            time.sleep(0.1)
        numbers = []
        for _ in range(2):
            out = subprocess.run(["bash", "-c", curl], capture_output=True, text=True, timeout=30)
            body = json.loads(out.stdout)
            assert body["status"] == "sealed", body
            assert body["mode"] == "device", body  # the simulated MCF seals; fiscal number = its TC
            assert body["security"]["counters"]["label"].endswith(" FV")
            assert len(body["security"]["code"]) == 24
            assert body["totals"]["total"] == "4064.00" and body["totals"]["vat"] == "64.00"
            numbers.append(body["security"]["fiscal_number"])
        assert numbers[1] == numbers[0] + 1
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, proc.stderr.read()
    # A second `up` on the same folder reuses the enrollment and key.
    assert (tmp_path / "demo" / "agent" / "enrollment.json").exists()
