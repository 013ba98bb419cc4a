"""The e-MCF simulator on its own: tokens, phase 1's checks and totals, confirm, cancel, the
pending limit and expiry, its counters/codes/QR, persistence across a restart, its CLI."""
from __future__ import annotations

import asyncio
import re
import subprocess
import sys

import pytest
from aiohttp.test_utils import TestClient

from simulator.emcf.app import Limits
from simulator.emcf.faults import Switchboard
from simulator.emcf.store import Store
from simulator.emcf.tokens import issue
from tests.forwarding.fwd_support import EmcfTestServer
from tests.support import ROOT

NIF, ISF = "A1234567B", "ISF-1"


def body(rn: str = "R-1", **over) -> dict:
    b = {"nif": NIF, "rn": rn, "mode": "ttc", "isf": ISF, "type": "FV",
         "items": [{"code": "EAU", "name": "EAU", "type": "BIE", "price": 720.0, "quantity": 5.0, "taxGroup": "B"}],
         "operator": {"id": None, "name": "Administrator"}, "client": None,
         "payment": [{"name": "ESPECES", "amount": 3600.0}], "reference": None}
    b.update(over)
    return b


@pytest.fixture
async def emcf(tmp_path):
    started = []

    async def start(limits: Limits | None = None, faults: Switchboard | None = None):
        store = Store(tmp_path / "emcf.sqlite3")
        client = TestClient(EmcfTestServer(store, faults, limits or Limits(), host="127.0.0.1"))
        await client.start_server()
        started.append((client, store))
        token = issue(store.secret, NIF, ISF, 3600)
        return client, {"Authorization": f"Bearer {token}"}, store

    yield start
    for client, store in started:
        await client.close()
        store.close()


async def call(client, method, path, headers, json=None):
    resp = await client.request(method, path, headers=headers, json=json)
    return resp.status, await resp.json(content_type=None)


async def test_two_phases_give_the_dgi_elements_and_counters(emcf):
    client, auth, _ = await emcf()
    status, first = await call(client, "POST", "/api/invoice", auth, body())
    assert status == 200 and "errorCode" not in first and "errorDesc" not in first
    assert (first["total"], first["vtotal"], first["tb"], first["tab"]) == (3600.0, 496.55, 16.0, 3600.0)
    status, pending = await call(client, "GET", "/api/invoice", auth)
    assert pending["pendingRequestsCount"] == 1 and pending["pendingRequestsList"][0]["rn"] == "R-1"
    status, refused = await call(client, "PUT", f"/api/invoice/{first['uid']}/confirm", auth,
                                 {"total": 3600.0, "vtotal": 496.0})
    assert status == 400 and refused["errorCode"] == "TOTALS_MISMATCH"
    status, done = await call(client, "PUT", f"/api/invoice/{first['uid']}/confirm", auth,
                              {"total": 3600.0, "vtotal": 496.55})
    assert status == 200 and done["counters"] == "1/1 FV"
    assert re.fullmatch(r"[A-Z2-7]{24}", done["codeDEFDGI"])
    assert re.fullmatch(rf"RDCDEF01;{done['nim']};{done['codeDEFDGI']};{NIF};\d{{14}}", done["qrCode"])
    status, again = await call(client, "PUT", f"/api/invoice/{first['uid']}/confirm", auth,
                               {"total": 3600.0, "vtotal": 496.55})
    assert status == 409 and again["errorCode"] == "NOT_PENDING"
    status, known = await call(client, "GET", f"/api/invoice/{first['uid']}", auth)
    assert known["status"] == "confirmed" and known["codeDEFDGI"] == done["codeDEFDGI"]
    _, second = await call(client, "POST", "/api/invoice", auth, body("R-2", type="FT"))
    _, done2 = await call(client, "PUT", f"/api/invoice/{second['uid']}/confirm", auth,
                          {"total": second["total"], "vtotal": second["vtotal"]})
    assert done2["counters"] == "1/2 FT"


@pytest.mark.parametrize("change, code", [
    ({"nif": "A0000000Z"}, "NIF_MISMATCH"),
    ({"type": "XX"}, "INVALID_FIELD"),
    ({"type": "FA"}, "REFERENCE_REQUIRED"),
    ({"mode": "both"}, "INVALID_FIELD"),
    ({"items": []}, "INVALID_FIELD"),
    ({"items": [{"name": "X", "type": "BIE", "price": -1.0, "quantity": 1.0, "taxGroup": "B"}]}, "INVALID_FIELD"),
    ({"items": [{"name": "X", "type": "BIE", "price": 1.0, "quantity": 0, "taxGroup": "B"}]}, "INVALID_FIELD"),
    ({"items": [{"name": "X", "type": "BIE", "price": "1", "quantity": 1.0, "taxGroup": "B"}]}, "INVALID_FIELD"),
    ({"items": [{"name": "X", "type": "BIE", "price": 1.0, "quantity": 1.0, "taxGroup": "Z"}]}, "INVALID_FIELD"),
])
async def test_phase_one_refuses_bad_invoices_with_error_code_and_keeps_nothing(emcf, change, code):
    client, auth, _ = await emcf()
    status, refused = await call(client, "POST", "/api/invoice", auth, body(**change))
    assert 400 <= status < 500 and refused["errorCode"] == code and refused["errorDesc"]
    _, pending = await call(client, "GET", "/api/invoice", auth)
    assert pending["pendingRequestsCount"] == 0


async def test_tokens_are_checked_and_requests_isolated_per_point_of_sale(emcf):
    client, auth, store = await emcf()
    raw = auth["Authorization"].split()[1]
    assert (await call(client, "GET", "/api/info/status", {"Authorization": raw}))[0] == 200  # no "Bearer "
    expired = issue(store.secret, NIF, ISF, -10)
    status, answer = await call(client, "GET", "/api/invoice", {"Authorization": f"Bearer {expired}"})
    assert status == 401 and answer["errorCode"] == "TOKEN_EXPIRED"
    forged = issue(b"another secret", NIF, ISF, 3600)
    status, answer = await call(client, "GET", "/api/invoice", {"Authorization": f"Bearer {forged}"})
    assert status == 401 and answer["errorCode"] == "TOKEN_INVALID"
    _, mine = await call(client, "POST", "/api/invoice", auth, body())
    other = {"Authorization": f"Bearer {issue(store.secret, NIF, 'ISF-2', 3600)}"}
    status, answer = await call(client, "PUT", f"/api/invoice/{mine['uid']}/cancel", other)
    assert status == 404 and answer["errorCode"] == "NOT_FOUND"


async def test_at_most_max_pending_then_expiry_frees_the_slots(emcf):
    client, auth, _ = await emcf(Limits(max_pending=2, pending_ttl=0.3))
    uids = [(await call(client, "POST", "/api/invoice", auth, body(f"R-{n}")))[1]["uid"] for n in range(2)]
    status, refused = await call(client, "POST", "/api/invoice", auth, body("R-3"))
    assert status == 429 and refused["errorCode"] == "PENDING_LIMIT"
    await asyncio.sleep(0.4)
    status, confirm = await call(client, "PUT", f"/api/invoice/{uids[0]}/confirm", auth,
                                 {"total": 3600.0, "vtotal": 496.55})
    assert status == 409 and "expired" in confirm["errorDesc"]
    assert (await call(client, "POST", "/api/invoice", auth, body("R-3")))[0] == 200


async def test_cancel_drops_the_request(emcf):
    client, auth, _ = await emcf()
    _, first = await call(client, "POST", "/api/invoice", auth, body())
    assert (await call(client, "PUT", f"/api/invoice/{first['uid']}/cancel", auth))[0] == 200
    status, answer = await call(client, "PUT", f"/api/invoice/{first['uid']}/confirm", auth,
                                {"total": 3600.0, "vtotal": 496.55})
    assert status == 409 and answer["errorCode"] == "NOT_PENDING"


async def test_a_restart_keeps_tokens_counters_and_requests(emcf, tmp_path):
    client, auth, store = await emcf()
    _, first = await call(client, "POST", "/api/invoice", auth, body())
    await call(client, "PUT", f"/api/invoice/{first['uid']}/confirm", auth, {"total": 3600.0, "vtotal": 496.55})
    await client.close()
    store.close()
    client2, _, _ = await emcf()
    _, second = await call(client2, "POST", "/api/invoice", auth, body("R-2"))  # the old token still works
    _, done = await call(client2, "PUT", f"/api/invoice/{second['uid']}/confirm", auth,
                         {"total": 3600.0, "vtotal": 496.55})
    assert done["counters"] == "2/2 FV"
    assert (await call(client2, "GET", f"/api/invoice/{first['uid']}", auth))[1]["status"] == "confirmed"


async def test_faults_switch_on_and_off_through_the_control_endpoint(emcf):
    client, auth, _ = await emcf()
    resp = await client.post("/_sim/faults", data="error_5xx=1\nexpired_token=1\n")
    assert resp.status == 200
    assert (await client.get("/api/invoice", headers=auth)).status == 500
    assert (await call(client, "GET", "/api/invoice", auth))[1]["errorCode"] == "TOKEN_EXPIRED"
    assert (await call(client, "GET", "/api/invoice", auth))[0] == 200
    bad = await client.post("/_sim/faults", data="nosuch=1\nerror_5xx=3\n")
    assert bad.status == 400 and (await bad.json())["errorCode"] == "BAD_FAULT"
    assert (await call(client, "GET", "/api/invoice", auth))[0] == 200  # nothing of the bad lines applied
    await client.post("/_sim/faults", data="down=503:1")
    assert (await client.get("/api/invoice", headers=auth)).status == 503
    assert (await client.get("/api/invoice", headers=auth)).status == 200


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "agent", "sim", "emcf", *args], capture_output=True, text=True,
                          cwd=ROOT)


def test_the_cli_refuses_bad_input_in_one_line(tmp_path):
    res = _cli("fault", "--url", "http://127.0.0.1:9", "nosuch=1")
    assert res.returncode == 2 and "unknown fault" in res.stderr and "Traceback" not in res.stderr
    res = _cli("fault", "--url", "http://127.0.0.1:9", "r429=2")
    assert res.returncode == 1 and "cannot reach" in res.stderr and "Traceback" not in res.stderr
    res = _cli("status", "--state", str(tmp_path / "none.sqlite3"))
    assert res.returncode == 1 and "no e-MCF simulator state" in res.stderr
    (tmp_path / "junk").write_text("not sqlite " * 100)
    res = _cli("token", "--state", str(tmp_path / "junk"), "--nif", NIF, "--isf", ISF)
    assert res.returncode == 1 and "not an e-MCF simulator state" in res.stderr and "Traceback" not in res.stderr
    res = _cli("run", "--state", str(tmp_path / "s.sqlite3"), "--fault", "down=maybe")
    assert res.returncode == 2 and "down must be" in res.stderr
    assert "lost_confirm" in _cli("faults").stdout


@pytest.mark.parametrize("raw", [
    b"[]", b'"x"', b"not json", b"\xff\xfe", b'{"nif": "A1234567B", "rn": "R", "mode": "ttc", "type": "FV", "items": "x"}',
    b'{"nif": "A1234567B", "rn": "R", "mode": "ttc", "type": "FV", "items": [1]}',
    b'{"nif": "A1234567B", "rn": "R", "mode": "ttc", "type": "FV", "items": [{"name": "X", "type": "BIE", '
    b'"price": NaN, "quantity": 1, "taxGroup": "B"}]}',
    b'{"nif": "A1234567B", "rn": "R", "mode": "ttc", "type": "FV", "items": [{"name": "X", "type": "BIE", '
    b'"price": Infinity, "quantity": 1, "taxGroup": "B"}]}',
    b'{"nif": "A1234567B", "rn": "R", "mode": "ttc", "type": "FV", "items": [{"name": "X", "type": "BIE", '
    b'"price": 1e300, "quantity": 1, "taxGroup": "B"}]}',
    b'{"nif": "A1234567B", "rn": ["R"], "mode": "ttc", "type": "FV", "items": []}',
    b'{"nif": "A1234567B", "rn": "R", "mode": "ttc", "type": "FV", "client": "x", "items": []}',
    b'{"nif": "A1234567B", "rn": "R", "mode": "ttc", "type": "FV", "payment": [{"name": 1}], "items": []}',
])
async def test_malformed_bodies_get_an_error_code_never_a_5xx(emcf, raw):
    client, auth, _ = await emcf()
    resp = await client.post("/api/invoice", data=raw, headers=auth)
    answer = await resp.json(content_type=None)
    assert 400 <= resp.status < 500 and answer["errorCode"] and answer["errorDesc"]
    resp = await client.put("/api/invoice/x/confirm", data=raw, headers=auth)
    assert 400 <= resp.status < 500 and (await resp.json(content_type=None))["errorCode"]


async def test_a_token_accepted_once_is_still_refused_once_it_expires(emcf):
    # Tokens are checked once then remembered: the expiry must still be checked at every call.
    client, _, store = await emcf()
    short = {"Authorization": f"Bearer {issue(store.secret, NIF, ISF, 1)}"}
    assert (await call(client, "GET", "/api/invoice", short))[0] == 200
    await asyncio.sleep(1.1)
    status, answer = await call(client, "GET", "/api/invoice", short)
    assert status == 401 and answer["errorCode"] == "TOKEN_EXPIRED"


async def test_progress_counts_normalizations_as_stats_do_and_keeps_them_across_a_restart(emcf):
    client, auth, store = await emcf()
    for n in range(3):
        _, first = await call(client, "POST", "/api/invoice", auth, body(f"R-{n}"))
        if n < 2:
            await call(client, "PUT", f"/api/invoice/{first['uid']}/confirm", auth, {"total": 3600.0, "vtotal": 496.55})
    assert (await call(client, "GET", "/_sim/progress", {}))[1] == {"normalized": 2}
    assert (await call(client, "GET", "/_sim/stats", {}))[1]["normalized"] == 2
    await client.close()
    store.close()
    client2, _, _ = await emcf()
    assert (await call(client2, "GET", "/_sim/progress", {}))[1] == {"normalized": 2}
