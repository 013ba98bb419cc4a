"""Many invoices from many outlets reach the DGI exactly once, in per-outlet order, within the
DGI's limits; two cloud instances sharing one database share the work without double sending."""
from __future__ import annotations

from tests.forwarding.fwd_support import (EmcfSim, check_exactly_once_in_order, fill_ledger, set_tokens,
                                          start_cloud, wait_forwarded)


def _forward_all(tmp_path, procs, outlets: int, per_outlet: int, timeout: float) -> None:
    ledger = fill_ledger(tmp_path / "cloud", outlets, per_outlet)
    sim = EmcfSim(tmp_path / "emcf.sqlite3").start("--max-pending", "10", "--rate", "100")
    procs.append(sim)
    cloud = start_cloud(tmp_path / "cloud", sim)
    procs.append(cloud)
    set_tokens(tmp_path / "cloud", sim, ledger)
    total = outlets * per_outlet
    rows = wait_forwarded(cloud, total, timeout=timeout)
    assert sum(r["counts"].get("normalized", 0) for r in rows) == total
    check_exactly_once_in_order(sim, ledger)
    stats = sim.stats()
    assert stats["normalized"] == total and stats["rn_normalized_twice"] == 0
    assert stats["since_start"].get("pending_limit", 0) == 0
    assert stats["since_start"].get("retry_after_ignored", 0) == 0


def test_10000_invoices_from_20_outlets_arrive_once_each_in_order(tmp_path, procs):
    # ≈ 25 s on the shared 2-core development machine: small enough to run by default.
    _forward_all(tmp_path, procs, 20, 500, timeout=900)


def test_two_cloud_instances_on_one_database_forward_each_invoice_once(tmp_path, procs):
    ledger = fill_ledger(tmp_path / "cloud", 6, 30)
    sim = EmcfSim(tmp_path / "emcf.sqlite3").start("--latency-ms", "5")
    procs.append(sim)
    first = start_cloud(tmp_path / "cloud", sim)
    procs.append(first)
    set_tokens(tmp_path / "cloud", sim, ledger)
    second = start_cloud(tmp_path / "cloud", sim)  # same data folder, another port and process
    procs.append(second)
    wait_forwarded(first, 180)
    check_exactly_once_in_order(sim, ledger)
    # Both instances ran a forwarder on the same queues (they share one log file here).
    logs = [(c.data_dir.parent / "cloud.log") for c in (first, second)]
    assert logs[0] == logs[1]
    owners = {line.split('"owner": "')[1].split('"')[0] for line in logs[0].read_text().splitlines()
              if '"dgi.forwarder_started"' in line}
    assert len(owners) == 2


def test_with_more_outlets_than_places_outlets_take_turns(tmp_path, procs):
    # One place, three outlets of 250: each turn forwards at most 100 entries (dgi_slice), then
    # the outlet that waited longest goes next; no outlet waits for another's whole backlog.
    ledger = fill_ledger(tmp_path / "cloud", 3, 250)
    sim = EmcfSim(tmp_path / "emcf.sqlite3").start()
    procs.append(sim)
    set_tokens(tmp_path / "cloud", sim, ledger)
    cloud = start_cloud(tmp_path / "cloud", sim, "--dgi-concurrency", "1")
    procs.append(cloud)
    wait_forwarded(cloud, 750, timeout=300)
    check_exactly_once_in_order(sim, ledger)
    order = [c["isf"] for c in sim.confirmed()]
    runs, longest = 1, 1
    for before, after in zip(order, order[1:]):
        runs = runs + 1 if after == before else 1
        longest = max(longest, runs)
    assert longest <= 100
    assert len(set(order[:300])) == 3  # every outlet had a turn within the first 300
