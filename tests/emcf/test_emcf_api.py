"""The DGI's e-MCF API served by a real agent on 127.0.0.1 (agent/emcf, docs/emcf-compat.md).

Every refusal is checked in the journal: no fiscal number used, no invoice stored.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from agent.api.keys import create_key
from fiscal.seal import verify_qr
from tests.emcf.emcf_client import EmcfClient, EmcfRefused, invoice, receipt_code
from tests.support import NIF, ROOT


@pytest.fixture
def agent(harness):
    harness.add_credential(harness.credential(1001, 1500))
    harness.start()
    return harness


@pytest.fixture
def client(agent):
    return EmcfClient(agent.url, agent.api_key)


def _sealed(agent) -> list[dict]:
    conn = agent.db()
    try:
        from agent.store.bodies import unpack
        return [json.loads(unpack(r["body"])) for r in conn.execute(
            "SELECT body FROM invoices WHERE status = 'sealed' ORDER BY seq")]
    finally:
        conn.close()


def _pending_rows(agent) -> dict[str, str]:
    conn = agent.db()
    try:
        return dict(conn.execute("SELECT uid, state FROM emcf_pending").fetchall())
    finally:
        conn.close()


def _refused(agent, method, path, body=None, **kw):
    """A refusal in the e-MCF shape, never problem+json, never a 5xx."""
    status, answer, headers = agent.request(method, path, body, **kw)
    assert 400 <= status < 500, (status, answer)
    assert headers["Content-Type"].startswith("application/json"), headers["Content-Type"]
    assert set(answer) == {"errorCode", "errorDesc"} and answer["errorDesc"], answer
    return status, answer


# ------------------------------------------------------------------------------ the two phases
def test_two_phase_flow_on_the_dgi_sample(agent, client):
    phase1 = client.submit(invoice("ACC-SINV-2026-00042", nif=NIF))
    assert "errorCode" not in phase1 and "errorDesc" not in phase1
    assert (phase1["total"], phase1["vtotal"]) == (4064.0, 64.0)
    assert (phase1["taa"], phase1["tab"], phase1["hab"], phase1["vab"]) == (3600.0, 464.0, 400.0, 64.0)
    assert (phase1["ta"], phase1["tb"], phase1["ts"]) == (0, 16, 0)
    assert agent.numbers() == []  # phase 1 normalizes nothing
    listed = client.pending()
    assert listed["nif"] == NIF and listed["pendingRequestsCount"] == 1
    assert [p["uid"] for p in listed["pendingRequestsList"]] == [phase1["uid"]]

    answer = client.confirm(phase1["uid"], 4064.0, 64.0)
    assert set(answer) == {"dateTime", "qrCode", "codeDEFDGI", "counters", "nim"}
    [sealed] = _sealed(agent)
    sec = sealed["security"]
    assert sealed["mode"] == "delegated" and agent.numbers() == [1001]
    assert answer["codeDEFDGI"] == sec["code"] and len(answer["codeDEFDGI"]) == 24
    assert answer["counters"] == "1/1001 FV" and answer["nim"] == sec["authority_id"] == "DC-KIN-001-1"
    assert answer["qrCode"] == sec["qr_payload"] and answer["dateTime"] == sec["timestamp"]
    assert verify_qr(answer["qrCode"], agent.issuer_pub).valid
    # What the e-MCF body became: our contract's fields.
    assert sealed["request_id"] == f"emcf-{phase1['uid']}" and sealed["invoice_number"] == "ACC-SINV-2026-00042"
    assert sealed["operator"] == {"id": "0", "name": "Administrator"} and sealed["pos_terminal_id"] == "POS-01"
    assert [(i["tax_group"], i["unit_price"], i["quantity"]) for i in sealed["items"]] == [
        ("A", "720.00", "5"), ("B", "464.00", "1")]
    assert sealed["totals"]["payments"] == [{"method": "E", "amount": "4064.00"}]
    assert client.pending()["pendingRequestsCount"] == 0
    assert agent.verify().returncode == 0


def test_repeated_confirm_answers_the_same_elements(agent, client):
    uid = client.submit(invoice("R-1", nif=NIF))["uid"]
    first = client.confirm(uid, 4064.0, 64.0)
    again = client.confirm(uid, 4064.0, 64.0)
    assert again == first
    assert agent.numbers() == [1001]


def test_confirm_with_other_totals_is_refused_and_uses_no_number(agent, client):
    uid = client.submit(invoice("R-1", nif=NIF))["uid"]
    status, answer = _refused(agent, "PUT", f"/api/invoice/{uid}/confirm", {"total": 4064.01, "vtotal": 64.0})
    assert answer["errorCode"] == "33" and status == 409
    _refused(agent, "PUT", f"/api/invoice/{uid}/confirm", {"total": 4064.0})  # vtotal missing
    assert agent.numbers() == [] and _sealed(agent) == []
    # The request is still pending: the right totals confirm it.
    assert client.confirm(uid, 4064.0, 64.0)["counters"] == "1/1001 FV"


def test_cancel_then_confirm_is_refused(agent, client):
    uid = client.submit(invoice("R-1", nif=NIF))["uid"]
    client.cancel(uid)
    client.cancel(uid)  # a repeated cancel is no error
    with pytest.raises(EmcfRefused) as refused:
        client.confirm(uid, 4064.0, 64.0)
    assert refused.value.code == "32"
    assert agent.numbers() == [] and _pending_rows(agent) == {uid: "cancelled"}
    assert client.pending()["pendingRequestsCount"] == 0


def test_cancel_after_confirm_is_refused(agent, client):
    uid = client.submit(invoice("R-1", nif=NIF))["uid"]
    client.confirm(uid, 4064.0, 64.0)
    with pytest.raises(EmcfRefused) as refused:
        client.cancel(uid)
    assert refused.value.code == "34"
    assert agent.numbers() == [1001]


def test_the_journal_outranks_a_lost_state_write(agent, client):
    # The request's state is kept without fsync; the seal, in the journal, is. A power cut that
    # lost the 'confirmed' (and 'confirming') state leaves it 'pending' beside its seal: it still
    # cannot be cancelled, and a repeated confirm answers the seal — one sale, one number.
    uid = client.submit(invoice("R-LOST", nif=NIF))["uid"]
    first = client.confirm(uid, 4064.0, 64.0)
    deadline = time.monotonic() + 10
    while _pending_rows(agent)[uid] != "confirmed" and time.monotonic() < deadline:
        time.sleep(0.05)  # recorded just after the answer
    conn = agent.db()
    conn.execute("UPDATE emcf_pending SET state = 'pending', invoice_id = NULL WHERE uid = ?", (uid,))
    conn.close()
    with pytest.raises(EmcfRefused):
        client.cancel(uid)
    assert client.confirm(uid, 4064.0, 64.0)["codeDEFDGI"] == first["codeDEFDGI"]
    assert agent.numbers() == [1001]


def test_expired_request_cannot_be_confirmed(harness):
    harness.configure(agent__emcf_pending_seconds=1)
    harness.add_credential(harness.credential(1001, 1500))
    harness.start()
    client = EmcfClient(harness.url, harness.api_key)
    uid = client.submit(invoice("R-1", nif=NIF))["uid"]
    time.sleep(1.5)
    assert client.pending()["pendingRequestsCount"] == 0
    with pytest.raises(EmcfRefused) as refused:
        client.confirm(uid, 4064.0, 64.0)
    assert refused.value.code == "31"
    with pytest.raises(EmcfRefused) as refused:
        client.cancel(uid)
    assert refused.value.code == "31"
    assert harness.numbers() == [] and _pending_rows(harness) == {uid: "expired"}


def test_pending_requests_survive_a_restart(agent, client):
    uid = client.submit(invoice("R-1", nif=NIF))["uid"]
    agent.stop()
    agent.start()
    assert client.confirm(uid, 4064.0, 64.0)["counters"] == "1/1001 FV"


def test_at_most_ten_pending_requests_per_key(agent, client):
    uids = [client.submit(invoice(f"R-{i}", nif=NIF))["uid"] for i in range(10)]
    status, answer = _refused(agent, "POST", "/api/invoice", invoice("R-10", nif=NIF))
    assert answer["errorCode"] == "20"
    # Another point of sale (another key) has its own ten.
    conn = agent.db()
    other = create_key(conn, "POS-02", "emcf")
    conn.close()
    assert EmcfClient(agent.url, other).submit(invoice("O-1", nif=NIF))["uid"]
    # A confirmed or cancelled request frees its place.
    client.cancel(uids[0])
    client.confirm(uids[1], 4064.0, 64.0)
    client.submit(invoice("R-11", nif=NIF))
    client.submit(invoice("R-12", nif=NIF))
    assert _refused(agent, "POST", "/api/invoice", invoice("R-13", nif=NIF))[1]["errorCode"] == "20"
    assert agent.numbers() == [1001] and client.pending()["pendingRequestsCount"] == 10


def test_a_key_sees_only_its_own_requests(agent, client):
    uid = client.submit(invoice("R-1", nif=NIF))["uid"]
    conn = agent.db()
    other = EmcfClient(agent.url, create_key(conn, "POS-02", "emcf"))
    conn.close()
    assert other.pending()["pendingRequestsCount"] == 0
    with pytest.raises(EmcfRefused) as refused:
        other.confirm(uid, 4064.0, 64.0)
    assert refused.value.code == "30"
    assert agent.numbers() == []


# ------------------------------------------------------------------------------ credit notes
def test_credit_note_references_the_original_by_its_code(agent, client):
    original = client.normalize(invoice("F-1", nif=NIF), 4064.0, 64.0)
    water = [{"code": "EAU-50CL", "name": "EAU", "type": "BIE", "price": 720.0, "quantity": 2.0, "taxGroup": "A"}]
    # As printed on the receipt (groups of 4): the client may copy it so.
    credit = invoice("AV-1", nif=NIF, type_="FA", items=water, payment=[{"name": "ESPECES", "amount": 1440.0}],
                     reference=receipt_code(original["codeDEFDGI"]), referenceType="RAM",
                     referenceDesc="RETOUR 2 EAU")
    answer = client.normalize(credit, 1440.0, 0.0)
    assert answer["counters"] == "1/1002 FA"
    sealed = _sealed(agent)[-1]
    assert sealed["type"] == "FA" and sealed["reference"] == {"nature": "RAM", "code": original["codeDEFDGI"]}
    assert sealed["comments"] == {"H": "RETOUR 2 EAU"}
    assert agent.numbers() == [1001, 1002]


def test_credit_note_against_an_unknown_code_is_refused(agent, client):
    water = [{"name": "EAU", "type": "BIE", "price": 720.0, "quantity": 1.0, "taxGroup": "A"}]
    for extra in ({"reference": "A" * 24, "referenceType": "RAM"},  # no such invoice here
                  {"reference": None, "referenceType": "RAM"},      # no reference at all
                  {"reference": "A" * 24, "referenceType": None}):  # no nature
        _, answer = _refused(agent, "POST", "/api/invoice", invoice("AV-1", nif=NIF, type_="FA", items=water, **extra))
        assert answer["errorCode"] == "11", answer
    assert agent.numbers() == [] and _pending_rows(agent) == {}


def test_credit_note_larger_than_its_original_is_refused_at_confirm(agent, client):
    original = client.normalize(invoice("F-1", nif=NIF), 4064.0, 64.0)
    water = [{"name": "EAU", "type": "BIE", "price": 720.0, "quantity": 2.0, "taxGroup": "A"}]
    first = client.submit(invoice("AV-1", nif=NIF, type_="FA", items=water, reference=original["codeDEFDGI"],
                                  referenceType="RAM"))
    many = [{"name": "EAU", "type": "BIE", "price": 720.0, "quantity": 5.0, "taxGroup": "A"}]
    second = client.submit(invoice("AV-2", nif=NIF, type_="FA", items=many, reference=original["codeDEFDGI"],
                                   referenceType="RAM"))
    client.confirm(first["uid"], 1440.0, 0.0)
    # 1440 already credited: 3600 more exceeds the 4064 of the original. Refused, no number used.
    _, answer = _refused(agent, "PUT", f"/api/invoice/{second['uid']}/confirm", {"total": 3600.0, "vtotal": 0.0})
    assert answer["errorCode"] == "11" and "exceeds" in answer["errorDesc"]
    assert agent.numbers() == [1001, 1002]
    client.cancel(second["uid"])  # back to pending after the refusal: it can be dropped


# ------------------------------------------------------------------------------ numbers and inputs
def test_float_noise_never_reaches_a_total(agent, client):
    items = [{"name": "JUS", "type": "BIE", "price": 100.10000000000001, "quantity": 3.0000000000000004,
              "taxGroup": "B"}]
    phase1 = client.submit(invoice("N-1", nif=NIF, items=items, payment=[{"name": "MOBILEMONEY", "amount": None}]))
    assert phase1["total"] == 300.30
    client.confirm(phase1["uid"], 300.3, phase1["vtotal"])
    [sealed] = _sealed(agent)
    assert sealed["items"][0]["unit_price"] == "100.10" and sealed["items"][0]["quantity"] == "3"
    assert sealed["totals"]["total"] == "300.30" and sealed["totals"]["payments"][0]["method"] == "M"


BAD = {
    "negative price": dict(items=[{"name": "X", "type": "BIE", "price": -1.0, "quantity": 1, "taxGroup": "B"}]),
    "negative quantity": dict(items=[{"name": "X", "type": "BIE", "price": 1.0, "quantity": -2, "taxGroup": "B"}]),
    "zero price": dict(items=[{"name": "X", "type": "BIE", "price": 0, "quantity": 1, "taxGroup": "B"}]),
    "price as text": dict(items=[{"name": "X", "type": "BIE", "price": "cheap", "quantity": 1, "taxGroup": "B"}]),
    "unknown tax group": dict(items=[{"name": "X", "type": "BIE", "price": 1.0, "quantity": 1, "taxGroup": "Z"}]),
    "no items": dict(items=[]),
    "unknown type": dict(type="XX"),
    "unknown mode": dict(mode="net"),
    "unknown payment": dict(payment=[{"name": "BITCOIN", "amount": 4064.0}]),
    "other taxpayer": dict(nif="B7654321C"),
    "no rn": dict(rn=None),
    "no operator": dict(operator=None),
    "euro": dict(curCode="EUR", curRate=3000.0, curDate="2026-03-01"),
    "reference on a sale": dict(reference="A" * 24, referenceType="RAM"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_an_emcf_error_and_changes_nothing(agent, case):
    status, answer = _refused(agent, "POST", "/api/invoice", {**invoice("B-1", nif=NIF), **BAD[case]})
    assert answer["errorCode"] in ("10", "11", "12"), answer
    assert agent.numbers() == [] and _pending_rows(agent) == {}


@pytest.mark.parametrize("raw", [
    b'{"rn": "X", "items": [{"name": "X", "type": "BIE", "price": NaN, "quantity": 1, "taxGroup": "B"}]}',
    b'{"rn": "X", "items": [{"name": "X", "type": "BIE", "price": Infinity, "quantity": 1, "taxGroup": "B"}]}',
    b'{"rn": "X", "items": [{"name": "X", "type": "BIE", "price": 1e400, "quantity": 1, "taxGroup": "B"}]}',
    b'{"rn": ', b"[1, 2]", b"\xff\xfe", b"",
])
def test_unreadable_bodies_are_emcf_errors(agent, raw):
    _, answer = _refused(agent, "POST", "/api/invoice", raw=raw)
    assert answer["errorCode"] in ("10", "11")
    assert agent.numbers() == [] and _pending_rows(agent) == {}


def test_validation_errors_use_the_emcf_field_names(agent):
    body = invoice("B-1", nif=NIF, items=[{"name": "X", "type": "BIE", "price": 10.0, "quantity": 1, "taxGroup": "B",
                                           "originalPrice": 12.0, "priceModification": "X" * 40}])
    _, answer = _refused(agent, "POST", "/api/invoice", body)
    assert "items[0].priceModification" in answer["errorDesc"], answer


def test_unknown_uid_route_and_method_are_emcf_errors(agent):
    assert _refused(agent, "PUT", "/api/invoice/nope/confirm", {"total": 1, "vtotal": 0})[1]["errorCode"] == "30"
    assert _refused(agent, "PUT", "/api/invoice/nope/cancel")[1]["errorCode"] == "30"
    assert _refused(agent, "GET", "/api/nowhere")[1]["errorCode"] == "3"
    assert _refused(agent, "DELETE", "/api/invoice")[1]["errorCode"] == "4"


# ------------------------------------------------------------------------------ keys
def test_token_with_or_without_bearer(agent):
    assert EmcfClient(agent.url, agent.api_key, bearer=False).status()["nif"] == NIF
    assert _refused(agent, "GET", "/api/info/status", key=None)[1]["errorCode"] == "1"
    assert _refused(agent, "GET", "/api/info/status", key="stk_wrong")[1]["errorCode"] == "1"


def test_a_key_is_limited_to_its_api(agent):
    conn = agent.db()
    v1_only, emcf_only = create_key(conn, "POS-V1", "v1"), create_key(conn, "ERP-1", "emcf")
    conn.close()
    status, answer = _refused(agent, "POST", "/api/invoice", invoice("K-1", nif=NIF), key=v1_only)
    assert (status, answer["errorCode"]) == (403, "2")
    status, body, headers = agent.get("/v1/invoices", key=emcf_only)
    assert status == 401 and headers["Content-Type"].startswith("application/problem+json")
    assert agent.get("/v1/invoices", key=v1_only)[0] == 200
    assert EmcfClient(agent.url, emcf_only).pending()["pendingRequestsCount"] == 0
    assert agent.numbers() == [] and _pending_rows(agent) == {}


def test_keys_create_with_an_api_scope(agent):
    def cli(*args):
        return subprocess.run([sys.executable, "-m", "agent", "agent", "keys", *args, "--data", str(agent.data_dir)],
                               capture_output=True, text=True, cwd=ROOT)
    made = cli("create", "--api", "v1", "POS-V1")
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip()
    listed = json.loads(cli("list", "--json").stdout)
    assert {k["name"]: k["api"] for k in listed["keys"]} == {"POS-01": "both", "POS-V1": "v1"}
    assert _refused(agent, "GET", "/api/info/status", key=key)[1]["errorCode"] == "2"
    bad = cli("create", "--api", "soap", "POS-X")
    assert bad.returncode != 0 and "Traceback" not in bad.stderr


# ------------------------------------------------------------------------------ information
def test_information_lists(agent, client):
    status = client.status()
    assert status["nif"] == NIF and status["status"] is True and status["nim"] == "DC-KIN-001-1"
    assert status["emcfList"][0]["status"] == "Actif" and "serverDateTime" in status
    groups = client.tax_groups()
    assert groups["a"] == 0 and groups["b"] == 16 and set(groups) <= set("abcdefghijklmnop")
    assert {t["type"] for t in client.info("invoiceTypes")} == {"FV", "FT", "FA", "EV", "ET", "EA"}
    assert {t["type"] for t in client.info("itemTypes")} == {"BIE", "SER", "TAX"}
    assert {t["type"] for t in client.info("clientTypes")} == {"PP", "PM", "PC", "PL", "AO"}
    assert {t["type"] for t in client.info("referenceTypes")} == {"COR", "RAN", "RAM", "RRR"}
    assert "ESPECES" in {t["type"] for t in client.info("paymentTypes")}
    assert client.info("currencyRates") == []


def test_v1_errors_stay_problem_json(agent):
    status, body, headers = agent.post("/v1/invoices", {"nothing": 1})
    assert status == 422 and headers["Content-Type"].startswith("application/problem+json")


def test_the_spec_client_runs_an_integration_unchanged(agent):
    """What an existing integration does, only its base URL changed to the agent's."""
    client = EmcfClient(agent.url, agent.api_key)
    assert client.status()["nif"] == NIF
    rates = client.tax_groups()
    # The client computes its own totals from the published rates, then normalizes.
    vat_b = round(464.0 * rates["b"] / (100 + rates["b"]), 2)
    answer = client.normalize(invoice("INT-1", nif=NIF), 3600.0 + 464.0, vat_b)
    assert answer["codeDEFDGI"] and client.stored_uids
    # A client whose own totals differ cancels on its side: nothing is normalized.
    with pytest.raises(EmcfRefused) as refused:
        client.normalize(invoice("INT-2", nif=NIF), 4000.0, 64.0)
    assert refused.value.code == "client"
    # A confirm whose answer was lost is sent again: the same elements, one number.
    uid = client.submit(invoice("INT-3", nif=NIF))["uid"]
    first = client.confirm(uid, 4064.0, 64.0)
    assert client.confirm(uid, 4064.0, 64.0) == first
    assert agent.numbers() == [1001, 1002]
    assert client.pending()["pendingRequestsCount"] == 0


def test_openapi_documents_every_emcf_route(agent, tmp_path):
    from agent.api.app import init_app
    from agent.config import AgentConfig

    app = init_app(AgentConfig(data_dir=tmp_path))
    served = {(r.method.lower(), r.resource.canonical) for r in app.router.routes()
              if r.resource.canonical.startswith("/api/") and r.method != "HEAD"}
    status, doc, _ = agent.get("/v1/openapi.json", key=None)
    documented = {(m, p) for p, ops in doc["paths"].items() if p.startswith("/api/") for m in ops}
    assert served and served == documented
    for name in ("EmcfInvoice", "EmcfPhase1", "EmcfSealed", "EmcfError"):
        assert name in doc["components"]["schemas"]


def test_specific_tax_amount_must_match_the_computed_one(agent, client):
    spec = {"name": "SPEC", "type": "BIE", "price": 500.0, "quantity": 4.0, "taxGroup": "B",
            "taxSpecificValue": 75.0, "taxSpecificAmount": 300.0}
    phase1 = client.submit(invoice("S-1", nif=NIF, items=[spec], payment=None))
    assert phase1["ts"] == 300.0
    _, answer = _refused(agent, "POST", "/api/invoice",
                         invoice("S-2", nif=NIF, items=[{**spec, "taxSpecificAmount": 299.0}], payment=None))
    assert answer["errorCode"] == "11" and "taxSpecificAmount" in answer["errorDesc"]


def test_a_confirm_interrupted_after_the_seal_is_answered_from_the_journal(agent, client):
    uid = client.submit(invoice("R-1", nif=NIF))["uid"]
    first = client.confirm(uid, 4064.0, 64.0)
    # The state a crash between the seal and its record leaves behind.
    conn = agent.db()
    conn.execute("UPDATE emcf_pending SET state = 'confirming', invoice_id = NULL WHERE uid = ?", (uid,))
    conn.close()
    agent.stop()
    agent.start()
    with pytest.raises(EmcfRefused) as refused:
        client.cancel(uid)  # its outcome is not recorded: only a confirm may settle it
    assert refused.value.code == "35"
    assert client.pending()["pendingRequestsCount"] == 1
    assert client.confirm(uid, 4064.0, 64.0) == first
    assert agent.numbers() == [1001] and _pending_rows(agent) == {uid: "confirmed"}


def test_body_over_the_limit_is_an_emcf_error(agent):
    status, answer = _refused(agent, "POST", "/api/invoice", raw=b"x" * (2 * 1024 * 1024))
    assert (status, answer["errorCode"]) == (413, "13")
    assert _pending_rows(agent) == {}


def test_no_signer_refuses_the_confirm_and_keeps_the_request(harness):
    harness.start()  # no credential, no device, no cloud: sealing is blocked
    client = EmcfClient(harness.url, harness.api_key)
    uid = client.submit(invoice("R-1", nif=NIF))["uid"]
    status, answer = _refused_or_503(harness, "PUT", f"/api/invoice/{uid}/confirm", {"total": 4064.0, "vtotal": 64.0})
    assert (status, answer["errorCode"]) == (503, "40")
    assert client.status()["status"] is False
    assert harness.numbers() == [] and _pending_rows(harness) == {uid: "pending"}
    client.cancel(uid)  # nothing was sealed: it can be dropped
    assert _pending_rows(harness) == {uid: "cancelled"}


def _refused_or_503(agent, method, path, body):
    status, answer, headers = agent.request(method, path, body)
    assert headers["Content-Type"].startswith("application/json") and set(answer) == {"errorCode", "errorDesc"}
    return status, answer


def test_concurrent_confirms_seal_once(agent, client):
    from concurrent.futures import ThreadPoolExecutor

    uid = client.submit(invoice("R-1", nif=NIF))["uid"]

    def confirm(_):
        try:
            return client.confirm(uid, 4064.0, 64.0)
        except EmcfRefused as exc:  # a confirm overtaken by another one is told to try again
            assert exc.code == "35", exc
            return client.confirm(uid, 4064.0, 64.0)

    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(confirm, range(6)))
    assert all(a == answers[0] for a in answers)
    assert agent.numbers() == [1001]


def test_a_pending_write_waits_for_the_lock_without_holding_the_agent(agent, client):
    # Phase 1 writes on the event loop only when SQLite's write lock is free at once; while
    # another writer holds it, the write waits in a thread and the agent keeps answering.
    from concurrent.futures import ThreadPoolExecutor

    blocker = agent.db()
    blocker.execute("BEGIN IMMEDIATE")
    try:
        with ThreadPoolExecutor(1) as pool:
            submitted = pool.submit(client.submit, invoice("R-LOCK", nif=NIF))
            for _ in range(5):  # the phase 1 has arrived by now, and waits for the lock
                time.sleep(0.1)
                assert client.status()["nif"] == NIF  # answered meanwhile
            assert not submitted.done() and _pending_rows(agent) == {}
            blocker.execute("COMMIT")
            uid = submitted.result(timeout=30)["uid"]
    finally:
        if blocker.in_transaction:
            blocker.execute("ROLLBACK")
        blocker.close()
    assert _pending_rows(agent) == {uid: "pending"}
    assert client.confirm(uid, 4064.0, 64.0)["counters"] == "1/1001 FV"
