"""Schema-driven fuzzing of the live POS API (schemathesis) against the OpenAPI document it serves.

Slow, and needs the `fuzz` extra: run with `./dev fuzz`. The check: no generated request, however
malformed, gets a 5xx answer (bad input is always a clear 4xx problem).
"""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def test_no_server_error_for_any_generated_request(harness):
    st = shutil.which("st") or str(Path(sys.executable).parent / "st")
    if not Path(st).exists():
        pytest.skip("schemathesis is not installed: run ./dev fuzz")
    harness.add_credential(harness.credential(1, 1_000_000))
    harness.start()
    before = harness.numbers()
    res = subprocess.run([st, "run", harness.url + "/v1/openapi.json", "-H", f"Authorization: Bearer {harness.api_key}",
                          "--checks", "not_a_server_error", "--max-examples", "200",
                          "--phases", "examples,fuzzing"], capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout[-4000:]
    assert "passed" in res.stdout
    assert len(harness.numbers()) >= len(before)
