"""One log schema on both sides (fiscal/runtime/logs.py): the agent's and the cloud's lines have
the same keys, secret-named fields never reach a line, exceptions carry no traceback."""
from __future__ import annotations

import io
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from agent import logs as agent_logs
from cloud_stub import logs as cloud_logs
from fiscal.runtime.logs import JsonFormatter, TextFormatter, formatter_for
from tests.support import python_path

SCHEMA = ["ts", "level", "logger", "event", "msg"]


@pytest.fixture
def restore_logging():
    """The setups replace handlers (pytest's own capture among them): put everything back."""
    saved = {}
    for name in (None, "stalela.cloud", "aiohttp.access", "apscheduler"):
        lg = logging.getLogger(name)
        saved[name] = (lg.handlers[:], lg.level, lg.propagate)
    yield
    for name, (handlers, level, propagate) in saved.items():
        lg = logging.getLogger(name)
        lg.handlers[:], lg.level, lg.propagate = handlers, level, propagate


def _lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_agent_and_cloud_lines_share_the_schema_and_drop_secrets(restore_logging):
    agent_out, cloud_out = io.StringIO(), io.StringIO()
    agent_logs.setup("INFO", stream=agent_out)
    cloud_logs.configure(stream=cloud_out)

    logging.getLogger("stalela.agent.sync").warning(
        "sync failed; will retry",
        extra={"event": "sync.failed", "error": "cloud unreachable", "token": "AGENT-SECRET-1",
               "body": {"private_key": "AGENT-SECRET-2", "outlet": "KIN-01"}, "pos_api_key": "AGENT-SECRET-3"})
    cloud_logs.event("agent.enrolled", outlet="KIN-01", agent_id="a-1", agent_token="CLOUD-SECRET-1",
                     authorization="Bearer CLOUD-SECRET-2", pin="1234", args="a field extra= would refuse")

    [agent_line], [cloud_line] = _lines(agent_out), _lines(cloud_out)
    assert list(agent_line)[:5] == SCHEMA and list(cloud_line)[:5] == SCHEMA
    assert (agent_line["event"], agent_line["level"], agent_line["logger"]) == \
        ("sync.failed", "warning", "stalela.agent.sync")
    assert (cloud_line["event"], cloud_line["level"], cloud_line["logger"]) == \
        ("agent.enrolled", "info", "stalela.cloud")
    assert agent_line["msg"] == "sync failed; will retry" and cloud_line["msg"] == "agent enrolled"
    assert agent_line["ts"].endswith("+00:00") and len(agent_line["ts"].split(".")[1]) == len("123+00:00")
    assert agent_line["body"] == {"outlet": "KIN-01"} and agent_line["error"] == "cloud unreachable"
    assert cloud_line["agent_id"] == "a-1" and cloud_line["args"] == "a field extra= would refuse"
    text = agent_out.getvalue() + cloud_out.getvalue()
    for secret in ("SECRET", "1234", "token", "authorization", "private_key", "pin", "api_key"):
        assert secret not in text


def test_an_exception_is_its_type_and_message_never_a_traceback(restore_logging):
    out = io.StringIO()
    agent_logs.setup("INFO", stream=out)
    api_key = "sk-NEVER-IN-A-LOG"  # a local a traceback could quote
    try:
        raise ValueError(f"bad amount ({len(api_key)} characters of key seen)")
    except ValueError:
        logging.getLogger("stalela.agent.api").exception("unhandled error", extra={"event": "api.error"})
    [line] = _lines(out)
    assert line["error"] == "ValueError: bad amount (17 characters of key seen)" and line["event"] == "api.error"
    assert "Traceback" not in out.getvalue() and api_key not in out.getvalue()


def test_a_terminal_gets_one_readable_line_with_the_same_fields(restore_logging):
    master, slave = os.openpty()
    with os.fdopen(slave, "w") as tty:
        assert isinstance(formatter_for(tty), TextFormatter)
        assert isinstance(formatter_for(io.StringIO()), JsonFormatter)
        cloud_logs.configure(stream=tty)
        cloud_logs.event("cloud.ready", port=8710, admin_token="NOT-THIS")
        tty.flush()
        text = os.read(master, 4096).decode()
    os.close(master)
    [line] = text.splitlines()
    assert "cloud.ready" in line and "INFO" in line and "cloud ready" in line and "port=8710" in line
    assert not line.startswith("{") and "NOT-THIS" not in line


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cloud_serve_log_level_hides_info_lines(tmp_path):
    port = _free_port()
    env = dict(os.environ, PYTHONPATH=python_path())
    proc = subprocess.Popen([sys.executable, "-m", "cloud_stub", "serve", "--data", str(tmp_path / "cloud"),
                             "--port", str(port), "--workers", "0", "--log-level", "WARNING"],
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/health", timeout=2) as resp:
                    assert resp.status == 200
                    break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
                time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        err = proc.stderr.read()
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    events = [json.loads(line)["event"] for line in err.splitlines()]
    assert "cloud.ready" not in events and "cloud.stopped" not in events
