"""Figures that depend on what surrounds the seal: a journal of 1,000,000 invoices (verify, the
seal's p99 against an empty journal's, storage) and a real cloud with the sync running.

Each latency figure is measured the same way on both sides of its ratio, in the same run:
warm-up sales (which also start the sealing process), then 8 clients in a closed loop, then one,
in rounds alternating between the two sides.
"""
from __future__ import annotations

import resource
import sqlite3
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support import AgentHarness, EnrolledAgent  # noqa: E402

from .loadgen import seal_load  # noqa: E402
from .workload import ten_item_invoice  # noqa: E402


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    k = max(0, min(len(values) - 1, int(round(p / 100 * (len(values) - 1)))))
    return values[k]


def load(url: str, key: str, clients: int, per_client: int, prefix: str) -> tuple[float, list[float]]:
    """`clients` POS terminals in a closed loop, each sealing `per_client` 10-item invoices."""
    return seal_load(url, key, clients, per_client, prefix, ten_item_invoice)


def sealing_process_ready(h: AgentHarness, timeout: float = 15.0) -> str:
    """Keep selling (two overlapping sales every 0.1 s) until the agent's sealing process is ready,
    as it is a moment after a busy shop's first sales; returns its state ("off" on a 1-core machine)."""
    deadline = time.monotonic() + timeout
    n = 0
    while True:
        state = h.get("/v1/health", key=None)[1].get("sealing_process", "off")
        if state in ("ready", "off") or time.monotonic() > deadline:
            return state
        n += 1
        load(h.url, h.api_key, 2, 2, f"ready-{n}")
        time.sleep(0.1)


def storage(db: Path) -> dict[str, float]:
    """Bytes per stored invoice (pages in use, indexes included) and the average stored body."""
    conn = sqlite3.connect(db)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        count = conn.execute("SELECT count(*) FROM invoices").fetchone()[0]
        pages = conn.execute("PRAGMA page_count").fetchone()[0] - conn.execute("PRAGMA freelist_count").fetchone()[0]
        psize = conn.execute("PRAGMA page_size").fetchone()[0]
        body_avg = conn.execute("SELECT avg(length(body)) FROM invoices").fetchone()[0]
    finally:
        conn.close()
    return {"count": count, "bytes_per_invoice": pages * psize / count, "body_bytes_avg": body_avg}


def verify_rate(h: AgentHarness) -> dict[str, float]:
    """`stalela verify` over the whole journal, as an operator runs it (a subprocess)."""
    count = storage(h.data_dir / "agent.db")["count"]
    cpu0 = _children_cpu()
    t = time.perf_counter()
    res = h.verify()
    elapsed = time.perf_counter() - t
    if res.returncode != 0:
        raise RuntimeError("verify failed on the benchmark journal: " + (res.stderr or res.stdout)[-2000:])
    # CPU of verify and its workers: what the rate would be with every core free for it, a figure
    # the other work on a shared machine does not move as much as the wall-clock rate.
    cpu_us = (_children_cpu() - cpu0) / count * 1e6
    return {"verify_rate": count / elapsed, "verify_count": count, "verify_cpu_us": cpu_us}


def _children_cpu() -> float:
    """User + system seconds of every child process waited for so far (and of their own children)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


ROUNDS = 4  # each latency load is cut in rounds alternating between the two journals


def stored_vs_empty(workdir: Path, big: AgentHarness, n8: int, n1: int, tag: str) -> dict[str, float]:
    """The seal's latency on an empty journal and on the large one. Both agents run side by side
    (the idle one costs nothing) and each load is cut in ROUNDS rounds that alternate between
    them, which goes first alternating too: a burst of other work on a shared machine then falls
    on both sides alike instead of on whichever was being measured."""
    empty = AgentHarness(workdir / f"empty-{tag}")
    empty.add_credential(empty.credential(1, 2_000_000))
    sides = {"empty": empty, "full": big}
    for h in sides.values():
        h.start()
    try:
        for name, h in sides.items():
            load(h.url, h.api_key, 2, 50, f"{name}-{tag}-warm")
            sealing_process_ready(h)
        out: dict[str, float] = {}
        for clients, per in ((8, n8), (1, n1)):
            lat: dict[str, list[float]] = {name: [] for name in sides}
            seconds = dict.fromkeys(sides, 0.0)
            for r in range(ROUNDS):
                for name in (("empty", "full") if r % 2 == 0 else ("full", "empty")):
                    h = sides[name]
                    t = time.perf_counter()
                    _, got = load(h.url, h.api_key, clients, max(1, per // ROUNDS), f"{name}-{tag}-c{clients}-{r}")
                    seconds[name] += time.perf_counter() - t
                    lat[name] += got
            for name in sides:
                out[f"{name}_p50_{clients}_ms"] = pct(lat[name], 50) * 1000
                out[f"{name}_p99_{clients}_ms"] = pct(lat[name], 99) * 1000
                if clients == 8:
                    out[f"{name}_rate8"] = len(lat[name]) / seconds[name]
    finally:
        for h in sides.values():
            h.stop()
    out["ratio_p99_1"] = out["full_p99_1_ms"] / out["empty_p99_1_ms"]
    out["ratio_p99_8"] = out["full_p99_8_ms"] / out["empty_p99_8_ms"]
    return out


def with_cloud(workdir: Path, n8: int) -> dict[str, float]:
    """8 clients on an agent enrolled with a real cloud on loopback, its sync uploading as it
    seals (every 0.5 s): rate and latency, how many invoices the cloud accepted meanwhile, and
    the CPU per invoice of every part on the machine's cores, from the load's start until the
    cloud has accepted them all (the budget at 2,000/s on two cores is 1,000 µs in all)."""
    from .sync import BLOCK, _start_cloud

    workdir.mkdir(parents=True, exist_ok=True)
    cloud = _start_cloud(workdir, None)
    try:
        h = EnrolledAgent(workdir / "agent", cloud, cloud.add_outlet(), block_size=BLOCK)
        h.start()
        try:
            load(h.url, h.api_key, 2, 50, "cloud-warm")
            sealing_process_ready(h)
            before = h.wait_synced(60).get("accepted", 0)
            parts = _parts(h.proc.pid, cloud.proc.pid)
            rate, lat = load(h.url, h.api_key, 8, n8, "cloud-c8")
            during = h.sync_state_counts().get("accepted", 0) - before
            h.wait_synced(120)
            parts = {k: v - parts[k] for k, v in _parts(h.proc.pid, cloud.proc.pid).items()}
        finally:
            h.stop()
    finally:
        cloud.stop()
    out = {"cloud_rate8": rate, "cloud_p50_8_ms": pct(lat, 50) * 1000, "cloud_p99_8_ms": pct(lat, 99) * 1000,
           "cloud_synced_during": during}
    out.update({f"cloud_cpu_{k}_us": v / (8 * n8) * 1e6 for k, v in parts.items()})
    return out


def _parts(agent_pid: int, cloud_pid: int) -> dict[str, float]:
    """CPU seconds so far of the agent's daemon, its sealing process, the cloud's service, its
    verification workers and this process (the load generator)."""
    from .forward import _cpu as tree_cpu  # a process and its descendants
    from .sync import _cpu_seconds as process_cpu  # the process alone

    daemon, service = process_cpu(agent_pid), process_cpu(cloud_pid)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {"daemon": daemon, "sealer": tree_cpu(agent_pid) - daemon, "cloud": service,
            "workers": tree_cpu(cloud_pid) - service, "loadgen": usage.ru_utime + usage.ru_stime}


def writer_latency(data_dir: Path, n: int, prefix: str) -> dict[str, float]:
    """The journal writer alone, in-process, one invoice per commit (what one client gets, minus
    HTTP and validation): p50 / p99 of submit → committed. On the large journal against the
    empty one it isolates what the journal's size costs the commit (indexes, checkpoints) from the
    noise of HTTP and of the other processes."""
    from agent.config import load_config
    from agent.service import AgentService

    from .journal import _copy

    service = AgentService.open(load_config(data_dir))
    try:
        template = service.prepare(ten_item_invoice(f"{prefix}-template"))
        lat = []
        for i in range(n):
            job = _copy(template, f"{prefix}-{i}")
            t = time.perf_counter()
            service.journal.submit(job).result()
            lat.append(time.perf_counter() - t)
    finally:
        service.close()
    return {"p50_ms": pct(lat, 50) * 1000, "p99_ms": pct(lat, 99) * 1000}


def writer_stored_vs_empty(workdir: Path, big: AgentHarness, n: int, tag: str) -> dict[str, float]:
    empty = AgentHarness(workdir / f"writer-empty-{tag}")
    empty.add_credential(empty.credential(1, 2_000_000))
    out = {f"writer_empty_{k}": v for k, v in writer_latency(empty.data_dir, n, f"we-{tag}").items()}
    out.update({f"writer_full_{k}": v for k, v in writer_latency(big.data_dir, n, f"wf-{tag}").items()})
    out["writer_ratio_p99"] = out["writer_full_p99_ms"] / out["writer_empty_p99_ms"]
    return out
