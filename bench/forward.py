"""DGI forwarding: a backlog of sealed invoices in the cloud's ledger, forwarded to the e-MCF
simulator (real processes: `stalela sim emcf run`, `stalela cloud serve --dgi-url`).

The simulator answers every call `latency_ms` late and keeps its limits (10 pending requests
per point of sale; an optional rate per point of sale). The forwarder confirms each outlet's
invoices one after the other, the next one's phase 1 going out beside each confirm (its
look-ahead: one round trip per invoice, still two calls), and outlets side by side, so the
bound its latency and limits allow is

    per outlet:  invoices × max(latency, 2 / rate)
    the backlog: that × ceil(outlets / concurrency)

(plus one pending-list look per outlet taken up). Run alone:
    python -m bench.forward --outlets 10 --per-outlet 100

Beside the wall time: the CPU every process involved spent per invoice (the cloud, the
simulator, PostgreSQL's backends serving the cloud when it runs on PostgreSQL), counted from
/proc between the cloud's start (once it answers) and the end. On a shared machine the wall time
moves with whatever else runs; the CPU per invoice much less. From it, the wall time that CPU
alone allows on two free cores: all the work spread over both, but no less than the CPU of the
busiest of the cloud and the simulator, which (Python, one GIL each) run on about one core each.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.forwarding.fwd_support import EmcfSim, fill_ledger, set_tokens  # noqa: E402
from tests.support import CloudProcess  # noqa: E402


CORES = 2  # the development machine's; the CPU-allowed wall time spreads the work over them
TICKS = os.sysconf("SC_CLK_TCK")


def _normalized(url: str) -> int:
    # /_sim/progress, not /_sim/stats: the latter counts the table, and would cost the
    # simulator more CPU the further the run went.
    with urllib.request.urlopen(url + "/_sim/progress", timeout=30) as resp:
        return json.loads(resp.read())["normalized"]


def _cpu(pid: int) -> float:
    """CPU seconds (user + system) of a process and its live descendants; 0 once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    total = (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            total += sum(_cpu(int(c)) for c in task.read_text().split())
        except OSError:
            pass
    return total


def _pg_backends() -> list[int]:
    """The PostgreSQL backends serving the cloud's database (none on SQLite)."""
    from cloud_stub.settings import DATABASE_URL_ENV
    url = os.environ.get(DATABASE_URL_ENV)
    if not url:
        return []
    import psycopg
    with psycopg.connect(url) as conn:
        return [r[0] for r in conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
            "AND backend_type = 'client backend' AND pid <> pg_backend_pid()")]


def _thread_cpu(pid: int, tid: int) -> float:
    """CPU seconds of one thread (the main thread: tid = pid)."""
    try:
        fields = Path(f"/proc/{pid}/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICKS


def _cpu_by_process(cloud_pid: int, sim_pid: int) -> dict[str, float]:
    # The cloud's event loop (its main thread) apart: the rest of its CPU is its database
    # threads (and the checkpointer), which share the loop's GIL.
    return {"cloud": _cpu(cloud_pid), "cloud_loop": _thread_cpu(cloud_pid, cloud_pid), "simulator": _cpu(sim_pid),
            "postgresql": sum(_cpu(p) for p in _pg_backends())}


def forward_backlog(workdir: Path, outlets: int = 100, per_outlet: int = 1000, latency_ms: int = 20,
                    max_pending: int = 10, rate: float = 0.0, concurrency: int | None = None,
                    timeout: float = 7200) -> dict[str, float]:
    concurrency = concurrency or outlets
    total = outlets * per_outlet
    t = time.perf_counter()
    ledger = fill_ledger(workdir / "cloud", outlets, per_outlet)
    fill_s = time.perf_counter() - t
    sim = EmcfSim(workdir / "emcf.sqlite3").start("--latency-ms", str(latency_ms), "--max-pending",
                                                   str(max_pending), "--rate", str(rate))
    cloud = CloudProcess(workdir / "cloud")
    try:
        # Tokens first (forwarding starts with the cloud), written as `stalela cloud dgi token`
        # writes them but in this process: a hundred CLI starts took longer than the forwarding.
        set_tokens(cloud.data_dir, sim, ledger)
        t = time.perf_counter()
        cloud.start(60, "--workers", "0", "--dgi-url", sim.url, "--dgi-concurrency", str(concurrency),
                    "--dgi-poll", "0.1")
        cpu0, done0 = _cpu_by_process(cloud.proc.pid, sim.proc.pid), _normalized(sim.url)
        deadline = time.monotonic() + timeout
        done = 0
        while done < total and time.monotonic() < deadline:
            time.sleep(0.25)
            done = _normalized(sim.url)
        forward_s = time.perf_counter() - t
        cpu1 = _cpu_by_process(cloud.proc.pid, sim.proc.pid)
    finally:
        cloud.stop()
        sim.stop()
    per_call = latency_ms / 1000
    per_invoice = max(per_call, 2 / rate if rate else 0.0)  # one round trip each (the look-ahead)
    bound = per_outlet * per_invoice * math.ceil(outlets / concurrency)
    measured = max(1, done - done0)
    cpu_us = {k: (cpu1[k] - cpu0[k]) / measured * 1e6 for k in cpu1}
    cpu_total_us = sum(v for k, v in cpu_us.items() if k != "cloud_loop")  # part of "cloud"
    return {"invoices": total, "outlets": outlets, "latency_ms": latency_ms, "concurrency": concurrency,
            "normalized": done, "fill_s": fill_s, "forward_s": forward_s, "bound_s": bound,
            "rate": done / forward_s if forward_s else 0.0,
            "cpu_us_per_invoice": {k: round(v) for k, v in cpu_us.items()},
            "cpu_us_per_invoice_total": round(cpu_total_us),
            # The cloud and the simulator are Python processes: each runs on about one core at a
            # time (its threads share the GIL), so the busiest one bounds the run too.
            "cpu_wall_s": total * max(cpu_total_us / CORES, cpu_us["cloud"], cpu_us["simulator"]) / 1e6}


def _cpu_text(r: dict) -> str:
    parts = ", ".join(f"{k.replace('cloud_loop', 'of which its event loop')} {v:,.0f}"
                      for k, v in r["cpu_us_per_invoice"].items() if v)
    return (f"{r['cpu_us_per_invoice_total']:,.0f} µs ({parts}); on {CORES} free cores: "
            f"{r['cpu_wall_s']:.1f} s")


def render(rows: list[dict[str, float]]) -> str:
    out = ["| figure | measured | bound from the DGI's latency and limits | ratio | CPU per invoice, all processes |",
           "|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['invoices']:,.0f} invoices, {r['outlets']:.0f} outlets, {r['latency_ms']:.0f} ms per call, "
                   f"{r['concurrency']:.0f} outlets at a time ({r['normalized']:,.0f} normalized) | "
                   f"{r['forward_s']:.1f} s ({r['rate']:.0f} invoices/s) | {r['bound_s']:.1f} s | "
                   + (f"{r['forward_s'] / r['bound_s']:.2f} × |" if r["bound_s"] else "— |")
                   + f" {_cpu_text(r)} |")
    return "\n".join(out)


def main() -> None:
    import tempfile

    ap = argparse.ArgumentParser(prog="python -m bench.forward")
    ap.add_argument("--outlets", type=int, default=100)
    ap.add_argument("--per-outlet", type=int, default=1000)
    ap.add_argument("--latency-ms", type=int, default=20)
    ap.add_argument("--rate", type=float, default=0.0)
    ap.add_argument("--concurrency", type=int, default=None)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        row = forward_backlog(Path(d), args.outlets, args.per_outlet, args.latency_ms, rate=args.rate,
                              concurrency=args.concurrency)
    print(json.dumps(row, indent=2))
    print(render([row]))


if __name__ == "__main__":
    main()
