"""Forwarding through the DGI's failures: a SIGKILL of the cloud mid-confirm, a 429 storm, lost
confirm answers, 5xx and an outage, stray pending requests, a permanent refusal (quarantine and
release by an operator). Real processes: the e-MCF simulator and `stalela cloud serve`."""
from __future__ import annotations

import json
import time
import urllib.request

from tests.forwarding.fwd_support import (EmcfSim, check_exactly_once_in_order, cloud_count, dgi_status, fill_ledger,
                                          set_tokens, stalela, start_cloud, wait_forwarded)


def _setup(tmp_path, procs, outlets: int, per_outlet: int, *sim_args: str):
    ledger = fill_ledger(tmp_path / "cloud", outlets, per_outlet)
    sim = EmcfSim(tmp_path / "emcf.sqlite3").start(*sim_args)
    procs.append(sim)
    return ledger, sim


def _cloud(tmp_path, procs, sim, ledger, tokens: bool = True):
    cloud = start_cloud(tmp_path / "cloud", sim)
    procs.append(cloud)
    if tokens:
        set_tokens(tmp_path / "cloud", sim, ledger)
    return cloud


def _cloud_normalized(cloud) -> int:
    return cloud_count(cloud.data_dir, "SELECT COUNT(*) FROM dgi_events WHERE kind = 'normalized'")


def _wait(predicate, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_sigkill_of_the_cloud_mid_confirm_then_restart_normalizes_each_invoice_once(tmp_path, procs):
    ledger, sim = _setup(tmp_path, procs, 4, 25, "--fault", "confirm_delay_ms=10000")
    cloud = _cloud(tmp_path, procs, sim, ledger)
    # The DGI normalized the outlets' first invoices; their answers are held: the cloud is mid-confirm.
    _wait(lambda: sim.stats()["normalized"] >= 4)
    cloud.kill()
    held = sim.stats()["normalized"]
    assert _cloud_normalized(cloud) == 0 < held  # normalized at the DGI, unknown to the cloud
    sim.fault("clear")
    cloud.start(30, "--workers", "0", "--dgi-url", sim.url, "--dgi-poll", "0.2", "--dgi-lease", "3s")
    wait_forwarded(cloud, 100)
    check_exactly_once_in_order(sim, ledger)
    assert sim.stats()["normalized"] == 100 and _cloud_normalized(cloud) == 100
    log = (cloud.data_dir.parent / "cloud.log").read_text()
    assert log.count('"dgi.resolved"') >= held  # recorded from the DGI's lookup, not normalized again


def test_a_429_storm_is_honoured_retry_after_and_all_arrive_once(tmp_path, procs):
    ledger, sim = _setup(tmp_path, procs, 4, 15, "--fault", "r429=30", "--fault", "retry_after=1")
    cloud = _cloud(tmp_path, procs, sim, ledger)
    wait_forwarded(cloud, 60)
    check_exactly_once_in_order(sim, ledger)
    counts = sim.stats()["since_start"]
    assert counts["answered_429"] >= 30
    assert counts.get("retry_after_ignored", 0) == 0  # nobody called again before Retry-After ended


def test_the_dgi_rate_limit_is_respected(tmp_path, procs):
    # 5 calls per second per point of sale; the cloud paced at 4: no 429 needed at all.
    ledger, sim = _setup(tmp_path, procs, 3, 8, "--rate", "5")
    cloud = start_cloud(tmp_path / "cloud", sim, "--dgi-rate", "4")
    procs.append(cloud)
    set_tokens(tmp_path / "cloud", sim, ledger)
    wait_forwarded(cloud, 24)
    check_exactly_once_in_order(sim, ledger)
    assert sim.stats()["since_start"].get("answered_429", 0) == 0


def test_lost_confirm_answers_are_resolved_by_lookup_not_by_a_second_normalization(tmp_path, procs):
    ledger, sim = _setup(tmp_path, procs, 3, 20, "--fault", "lost_confirm=6")
    cloud = _cloud(tmp_path, procs, sim, ledger)
    wait_forwarded(cloud, 60)
    check_exactly_once_in_order(sim, ledger)
    stats = sim.stats()
    assert stats["normalized"] == 60 and stats["rn_normalized_twice"] == 0
    assert sim.stats()["requests"].get("confirmed") == 60
    log = (cloud.data_dir.parent / "cloud.log").read_text()
    assert log.count('"dgi.resolved"') == 6


def test_lost_phase_one_answers_leave_strays_that_are_cancelled_not_confirmed(tmp_path, procs):
    ledger, sim = _setup(tmp_path, procs, 2, 10, "--fault", "lost_submit=3")
    cloud = _cloud(tmp_path, procs, sim, ledger)
    wait_forwarded(cloud, 20)
    check_exactly_once_in_order(sim, ledger)
    # The strays, at the next take-up: the 3 lost answers, and each look-ahead request whose uid
    # was forgotten when its outlet backed off before confirming it (forwarder.py).
    forgotten = (cloud.data_dir.parent / "cloud.log").read_text().count('"dgi.ahead_forgotten"')
    _wait(lambda: sim.stats()["requests"].get("cancelled", 0) >= 3 + forgotten)
    assert sim.stats()["requests"] == {"confirmed": 20, "cancelled": 3 + forgotten}


def test_5xx_an_outage_and_dropped_connections_lose_nothing(tmp_path, procs):
    ledger, sim = _setup(tmp_path, procs, 3, 15, "--fault", "error_5xx=5", "--fault", "down=503:8")
    cloud = _cloud(tmp_path, procs, sim, ledger)
    _wait(lambda: sim.stats()["normalized"] >= 10)
    sim.fault("down=drop:6")
    wait_forwarded(cloud, 45)
    check_exactly_once_in_order(sim, ledger)
    assert sim.stats()["rn_normalized_twice"] == 0


def test_stray_pending_requests_are_cancelled_so_the_pending_limit_is_never_hit(tmp_path, procs):
    ledger, sim = _setup(tmp_path, procs, 1, 12, "--max-pending", "3")
    token = sim.token("A1234567B", "ISF-001")
    for n in range(3):  # phase 1 answered, the uid never kept: what a crash leaves behind
        body = {"nif": "A1234567B", "rn": f"STRAY-{n}", "mode": "ttc", "isf": "ISF-001", "type": "FV",
                "items": [{"name": "X", "type": "BIE", "price": 10.0, "quantity": 1.0, "taxGroup": "B"}]}
        req = urllib.request.Request(sim.url + "/api/invoice", data=json.dumps(body).encode(), method="POST",
                                     headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            assert "uid" in json.loads(resp.read())
    cloud = _cloud(tmp_path, procs, sim, ledger)
    wait_forwarded(cloud, 12)
    check_exactly_once_in_order(sim, ledger)
    stats = sim.stats()
    assert stats["requests"].get("cancelled") == 3
    assert stats["since_start"].get("pending_limit", 0) == 0


def test_a_permanent_refusal_is_quarantined_visible_and_released_by_an_operator(tmp_path, procs):
    ledger, sim = _setup(tmp_path, procs, 2, 10, "--fault", "refuse=1")
    cloud = _cloud(tmp_path, procs, sim, ledger)
    rows = wait_forwarded(cloud, 20)
    quarantined = [(r["outlet_id"], q) for r in rows for q in r["quarantined"]]
    assert len(quarantined) == 1
    outlet_id, q = quarantined[0]
    assert q["error_code"] == "INVOICE_REFUSED" and q["error_desc"]
    # The rest of the outlet's queue went on; the refused invoice is not at the DGI.
    assert sim.stats()["normalized"] == 19
    assert q["invoice_id"] not in {c["rn"] for c in sim.confirmed()}
    # Visible to the outlet's operator in the API and the CLI ...
    api = cloud.get(f"/v1/outlets/{outlet_id}/dgi", cloud.admin_token())
    assert [e["invoice_id"] for e in api["quarantined"]] == [q["invoice_id"]]
    text = stalela("cloud", "dgi", "status", "--data", str(cloud.data_dir), "--outlet", outlet_id).stdout
    assert "INVOICE_REFUSED" in text and q["invoice_id"] in text
    invoice = cloud.get(f"/v1/outlets/{outlet_id}/invoices/{q['invoice_id']}/dgi", cloud.admin_token())
    assert invoice["state"] == "quarantined" and invoice["error_code"] == "INVOICE_REFUSED"
    # ... and released by one: sent again, normalized once.
    out = stalela("cloud", "dgi", "release", "--data", str(cloud.data_dir), "--outlet", outlet_id,
                  "--seq", str(q["seq"])).stdout
    assert f"seq {q['seq']}" in out
    _wait(lambda: sim.stats()["normalized"] == 20)
    _wait(lambda: cloud.get(f"/v1/outlets/{outlet_id}/invoices/{q['invoice_id']}/dgi",
                            cloud.admin_token())["state"] == "normalized")
    confirmed = [c["rn"] for c in sim.confirmed()]
    assert sorted(confirmed) == sorted(i for ids in ledger.values() for i in ids)
    # Released out of its place, by the operator's decision; the others kept the ledger's order.
    others = {o: [i for i in ids if i != q["invoice_id"]] for o, ids in ledger.items()}
    for o, ids in others.items():
        isf = "ISF-" + o.split("-")[1]
        assert [c["rn"] for c in sim.confirmed() if c["isf"] == isf and c["rn"] != q["invoice_id"]] == ids
    again = stalela("cloud", "dgi", "release", "--data", str(cloud.data_dir), "--outlet", outlet_id,
                    "--seq", str(q["seq"]), check=False)
    assert again.returncode == 1 and "not quarantined" in again.stderr and "Traceback" not in again.stderr


def test_a_refused_token_backs_off_without_quarantine_and_a_new_token_resumes_at_once(tmp_path, procs):
    ledger, sim = _setup(tmp_path, procs, 1, 5)
    from cloud_stub.config import CloudConfig
    from cloud_stub.forwarder import save_token
    tokens = CloudConfig(data_dir=tmp_path / "cloud").dgi_tokens_path
    save_token(tokens, "OUT-001", sim.token("A1234567B", "ISF-001", ttl=-60))  # expired already
    cloud = _cloud(tmp_path, procs, sim, ledger, tokens=False)
    _wait(lambda: "token" in (dgi_status(cloud)[0]["last_error"] or ""))
    status = dgi_status(cloud)[0]
    assert status["quarantined"] == [] and sim.stats()["normalized"] == 0
    # The operator renews it: forwarding resumes now, not after the 60 s back-off.
    stalela("cloud", "dgi", "token", "--data", str(cloud.data_dir), "--outlet", "OUT-001", "--token-file", "-",
            stdin=sim.token("A1234567B", "ISF-001"))
    rows = wait_forwarded(cloud, 5, timeout=30)
    assert rows[0]["counts"] == {"normalized": 5}
    check_exactly_once_in_order(sim, ledger)


def test_without_the_dgi_lookup_a_lost_confirm_is_quarantined_never_sent_twice(tmp_path, procs):
    ledger, sim = _setup(tmp_path, procs, 2, 10, "--fault", "lost_confirm=2")
    cloud = start_cloud(tmp_path / "cloud", sim, "--no-dgi-lookup")
    procs.append(cloud)
    set_tokens(tmp_path / "cloud", sim, ledger)
    rows = wait_forwarded(cloud, 20)
    uncertain = [q for r in rows for q in r["quarantined"]]
    assert [q["error_code"] for q in uncertain] == ["DGI_UNCERTAIN"] * 2
    stats = sim.stats()
    # The DGI did normalize them (their answers were lost); nobody sent them a second time.
    assert stats["normalized"] == 20 and stats["rn_normalized_twice"] == 0
    assert {q["invoice_id"] for q in uncertain} <= {c["rn"] for c in sim.confirmed()}
