"""The outlet's status page (GET /) through the real daemon on real sockets."""
from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from dataclasses import replace

import pytest

from agent.identity import OutletIdentity
from tests.support import invoice


@pytest.fixture
def agent(harness):
    harness.add_credential(harness.credential(1001, 1500))
    harness.start()
    return harness


def _page(agent, path: str = "/", **kw) -> tuple[int, str, dict]:
    status, body, headers = agent.get(path, key=None, **kw)
    return status, body.decode("utf-8") if isinstance(body, bytes) else body, headers


def test_page_shows_colour_numbers_and_sync_without_a_key(agent):
    assert agent.post("/v1/invoices", invoice("R-1"))[0] == 201
    status, text, headers = _page(agent)
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    health = agent.get("/v1/health")[1]
    assert health["state"] == "amber"  # delegated, cloud unreachable: offline but selling
    assert 'data-state="amber"' in text and "Offline: sales go on" in text
    assert '<strong class="big" id="numbers-left">499</strong>' in text
    assert '<strong class="big" id="sync-pending">1</strong>' in text
    assert "DC-KIN-001-1" in text and "1001 – 1500" in text
    assert "No Z report yet." in text
    assert headers["Cache-Control"] == "no-store"
    assert "script-src 'nonce-" in headers["Content-Security-Policy"]


def test_no_secret_on_the_page(agent):
    agent.post("/v1/invoices", invoice("R-1"))
    token = (agent.data_dir / "keys" / "cloud.token").read_text().strip()
    for path in ("/", "/?format=json"):
        text = _page(agent, path)[1]
        text = text if isinstance(text, str) else json.dumps(text)
        assert agent.api_key not in text and token not in text
        assert "PRIVATE KEY" not in text


def test_json_form_has_the_same_data(agent):
    agent.post("/v1/invoices", invoice("R-1"))
    status, by_query, headers = agent.get("/?format=json", key=None)
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    status, by_accept, _ = agent.get("/", key=None, headers={"Accept": "application/json"})
    assert status == 200 and isinstance(by_accept, dict)
    health = agent.get("/v1/health")[1]
    for view in (by_query, by_accept):
        assert view["state"] == health["state"] and view["status"] == health["status"]
        assert view["credential"]["remaining_numbers"] == 499
        assert view["sync"]["pending"] == 1
        assert view["what_to_do"] == []
    # A browser's Accept (html first) gets the page.
    status, text, headers = _page(agent, headers={"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"})
    assert headers["Content-Type"].startswith("text/html")


def test_bad_format_is_a_problem(agent):
    status, body, headers = agent.get("/?format=xml", key=None)
    assert status == 400 and headers["Content-Type"].startswith("application/problem+json")
    assert "format is html or json" in body["detail"]


def test_journal_values_are_escaped(harness):
    """A name holding markup shows as text, never as a tag or a script."""
    path = harness.data_dir / "enrollment.json"
    evil = '<script>alert("x")</script><img src=x onerror=alert(1)>'
    replace(OutletIdentity.load(path), outlet_name=evil).save(path)
    harness.add_credential(harness.credential(1001, 1500))
    harness.start()
    text = _page(harness)[1]
    assert "<script>alert" not in text and "<img src=x" not in text
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&lt;img src=x onerror=alert(1)&gt;" in text


def test_red_page_says_stop_and_what_to_do(harness):
    harness.add_credential(harness.credential(1001, 1001))  # one number: used up by the first sale
    harness.start()
    assert harness.post("/v1/invoices", invoice("R-1"))[0] == 201
    assert harness.post("/v1/invoices", invoice("R-2"))[0] == 503
    status, text, _ = _page(harness)
    assert status == 200
    assert 'data-state="red"' in text and "Sales must stop" in text
    assert 'id="what-to-do"' in text and "<code>stalela credential renew</code>" in text
    assert '<strong class="big" id="numbers-left">0</strong>' in text
    view = harness.get("/?format=json", key=None)[1]
    assert view["state"] == "red" and view["what_to_do"] and view["reason"]


def test_last_z_report_is_shown(agent):
    agent.post("/v1/invoices", invoice("R-1"))
    agent.post("/v1/invoices", invoice("R-2"))
    status, z, _ = agent.post("/v1/reports/z")
    assert status == 201, z
    text = _page(agent)[1]
    assert "<dt>Z number</dt><dd><strong>1</strong></dd>" in text
    assert f"<dt>Net total</dt><dd>{z['totals']['net']['total']}</dd>" in text
    assert agent.get("/?format=json", key=None)[1]["last_z"]["invoices"] == 2


def test_other_host_name_is_refused(agent):
    """DNS rebinding: a site whose name resolves to 127.0.0.1 must not read the page."""
    status, body, headers = agent.get("/", key=None, headers={"Host": f"evil.example:{agent.port}"})
    assert status == 403 and headers["Content-Type"].startswith("application/problem+json")
    assert body["type"].endswith("/problems/not-loopback")
    assert agent.get("/", key=None, headers={"Host": f"localhost:{agent.port}"})[0] == 200


def _outward_address() -> str | None:
    """This machine's address on its network (the source of a connection to it), if it has one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # no packet is sent: this only picks the outgoing interface
            address = s.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") else address


def test_refused_from_a_non_loopback_address(harness):
    address = _outward_address()
    if address is None:
        pytest.skip("this machine has no non-loopback address to call from")
    harness.configure(agent__host="0.0.0.0")
    harness.add_credential(harness.credential(1001, 1500))
    harness.start()
    url = f"http://{address}:{harness.port}"
    # The agent does answer on that address (the health probe is public)...
    with urllib.request.urlopen(url + "/v1/health", timeout=10) as resp:
        assert resp.status == 200
    # ...but the status page is refused to a caller that is not this machine's loopback.
    for path in ("/", "/?format=json"):
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(urllib.request.Request(url + path, headers={"Host": f"127.0.0.1:{harness.port}"}),
                                   timeout=10)
        assert err.value.code == 403
        assert err.value.headers["Content-Type"].startswith("application/problem+json")
        problem = json.loads(err.value.read())
        assert "loopback" in problem["detail"]
    assert _page(harness)[0] == 200  # and still shown on loopback


def test_device_and_its_alerts_are_shown(tmp_path):
    """A simulated MCF on a real pseudo-terminal: shown while it works, and its alert once unplugged."""
    from tests.device.device_support import MID, SimDevice, device_agent, wait_for

    sim = SimDevice(tmp_path / "sim")
    agent = device_agent(tmp_path / "agent", sim)
    try:
        agent.start()
        assert agent.post("/v1/invoices", invoice("d-1"))[1]["mode"] == "device"
        text = _page(agent)[1]
        assert f"<dt>Device id (MID)</dt><dd>{MID}</dd>" in text
        assert "<dt>Fiscal device</dt><dd>available</dd>" in text and "No alerts." in text
        sim.unplug()
        assert agent.post("/v1/invoices", invoice("d-2"))[1]["mode"] == "delegated"
        view = wait_for(lambda: (v := agent.get("/?format=json", key=None)[1])["device"]["alerts"] and v)
        assert view["device"]["available"] is False
        text = _page(agent)[1]
        assert "<strong>not available</strong>" in text
        assert '<ul class="alerts">' in text and "<li>device unreachable" in text
    finally:
        agent.stop()
        sim.stop()
