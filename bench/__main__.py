"""Run every benchmark once per repetition and write docs/benchmarks.md.

Usage: ./dev bench [--runs 3] [--quick] [--dashboard-scale 1.0] [--cloud-db sqlite|postgresql]

Each figure is reported with the physical limit measured in the same run, as a ratio.
Medians over the runs; nothing here is asserted (benchmarks measure, tests check).
"""
from __future__ import annotations

import argparse
import os
import platform
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from . import limits, scale
from .scale import load, pct, sealing_process_ready

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.support import AgentHarness  # noqa: E402  (the local test issuer; real agent process)


CORES = os.cpu_count() or 1
RESTARTS = 7


_load = load
_sealing_process_ready = sealing_process_ready


def rss_mb(pid: int) -> float:
    """RSS of the agent: the daemon plus its children (the sealing process, when running)."""
    total = 0.0
    for p in [pid] + [int(c) for c in subprocess.run(["pgrep", "-P", str(pid)], capture_output=True,
                                                      text=True).stdout.split()]:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) / 1024
        except OSError:
            pass
    return total


def one_run(workdir: Path, quick: bool) -> dict[str, float]:
    r: dict[str, float] = {}
    h = AgentHarness(workdir / "agent")
    h.add_credential(h.credential(1, 2_000_000))
    t0 = time.perf_counter()
    h.start()
    r["cold_start_s"] = time.perf_counter() - t0
    time.sleep(0.5)
    r["rss_idle_mb"] = rss_mb(h.proc.pid)
    try:
        n8 = 250 if quick else 1000
        # warm-up: the first sales; overlapping, they also start the sealing process
        _load(h.url, h.api_key, 2, 50, "warm")
        r["sealing_process_ready"] = 1.0 if _sealing_process_ready(h) == "ready" else 0.0
        rate, lat = _load(h.url, h.api_key, 8, n8, "c8")
        r["seal8_rate"] = rate
        r["seal8_p50_ms"] = pct(lat, 50) * 1000
        r["seal8_p99_ms"] = pct(lat, 99) * 1000
        r["rss_load_mb"] = rss_mb(h.proc.pid)
        _, lat1 = _load(h.url, h.api_key, 1, 300 if quick else 1000, "c1")
        r["seal1_p50_ms"] = pct(lat1, 50) * 1000
        r["seal1_p99_ms"] = pct(lat1, 99) * 1000
        # First invoice after a restart, against the same request on the warm agent: one invoice
        # on a new connection after a pause (what a restart's first invoice is, minus the restart).
        single = []
        for k in range(9):
            time.sleep(0.1)
            single.append(_load(h.url, h.api_key, 1, 1, f"single-{k}")[1][0])
        r["warm_single_ms"] = statistics.median(single) * 1000
        firsts = []  # one sample per restart is at the mercy of a single fsync: take several
        for k in range(RESTARTS):
            h.stop()
            h.start()
            firsts.append(_load(h.url, h.api_key, 1, 1, f"first-{k}")[1][0])
        r["first_after_restart_ms"] = statistics.median(firsts) * 1000
        r["first_vs_warm"] = r["first_after_restart_ms"] / r["warm_single_ms"]
    finally:
        h.stop()
    # Storage per sealed invoice.
    db = h.data_dir / "agent.db"
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    count = conn.execute("SELECT count(*) FROM invoices").fetchone()[0]
    pages = conn.execute("PRAGMA page_count").fetchone()[0] - conn.execute("PRAGMA freelist_count").fetchone()[0]
    psize = conn.execute("PRAGMA page_size").fetchone()[0]
    body_avg = conn.execute("SELECT avg(length(body)) FROM invoices").fetchone()[0]
    conn.close()
    r["bytes_per_invoice"] = pages * psize / count
    r["body_bytes_avg"] = body_avg
    # Offline verification rate.
    t = time.perf_counter()
    res = h.verify()
    if res.returncode != 0:
        raise RuntimeError("verify failed on the benchmark journal: " + res.stderr)
    r["verify_rate"] = count / (time.perf_counter() - t)
    r["verify_count"] = count
    return r


def measure_limits() -> dict[str, float]:
    canon = limits.canonicalization()
    lim = {
        "commit_rate": limits.durable_commit_rate(),
        "sign_rate": limits.signature_rate(),
        "verify_sig_rate": limits.verification_rate(),
        "verify_checked_rate": limits.checked_verification_rate(),
        "canon_fast_us": canon["fast"] * 1e6,
        "canon_ref_us": canon["rfc8785"] * 1e6,
        "http_empty_ms": limits.empty_http_roundtrip() * 1000,
    }
    # The serial limit of one seal: sign + canonicalize twice + one durable commit.
    per_seal = 1 / lim["sign_rate"] + 2 * canon["fast"] + 1 / lim["commit_rate"]
    lim["pipeline_serial_limit"] = 1 / per_seal
    return lim


def commit_id() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=ROOT).stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def render(runs: list[dict[str, float]], lims: list[dict[str, float]]) -> str:
    m = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    L = {k: statistics.median(x[k] for x in lims) for k in lims[0]}
    rows = [
        ("delegated seal over HTTP, 10 items, 8 clients", f"{m['seal8_rate']:.0f} invoices/s",
         "≥ 1,000/s", f"{m['seal8_rate'] / L['commit_rate']:.2f} × durable single-row commit rate "
                      f"({L['commit_rate']:.0f}/s); group commit lifts it"),
        ("  p50 / p99 latency (8 clients)", f"{m['seal8_p50_ms']:.1f} / {m['seal8_p99_ms']:.1f} ms", "p99 ≤ 25 ms",
         f"{m['seal8_p99_ms'] / L['http_empty_ms']:.0f} × empty HTTP round trip ({L['http_empty_ms']:.2f} ms)"),
        ("delegated seal, 1 client: p50 / p99", f"{m['seal1_p50_ms']:.1f} / {m['seal1_p99_ms']:.1f} ms",
         "p50 ≤ 3 ms, p99 ≤ 10 ms",
         f"p50 = {m['seal1_p50_ms'] / (L['http_empty_ms'] + 1000 / L['commit_rate']):.1f} × (empty round trip + one durable commit)"),
        ("serial seal limit (sign + 2 × canonicalize + 1 commit)", f"{L['pipeline_serial_limit']:.0f} /s", "—",
         f"HTTP figure is {m['seal8_rate'] / L['pipeline_serial_limit']:.2f} × this limit"),
        ("cold start to ready", f"{m['cold_start_s']:.2f} s", "≤ 1.5 s", "process spawn + imports + journal open"),
        (f"first invoice after restart (median of {RESTARTS} restarts)", f"{m['first_after_restart_ms']:.1f} ms",
         "≤ 2 × warm", f"{m['first_vs_warm']:.1f} × the warm agent's single invoice on a new connection "
                       f"({m['warm_single_ms']:.1f} ms); {m['first_after_restart_ms'] / m['seal1_p50_ms']:.1f} × "
                       f"the 1-client loop's p50"),
        ("agent RSS idle / under load", f"{m['rss_idle_mb']:.0f} / {m['rss_load_mb']:.0f} MB", "≤ 80 / ≤ 150 MB",
         "daemon + sealing process (idle: the daemon alone; the sealing process starts when sales overlap)"),
        ("storage per sealed 10-item invoice", f"{m['bytes_per_invoice']:.0f} B (body {m['body_bytes_avg']:.0f} B)",
         "≤ 3 KB", "includes indexes"),
        ("stalela verify", f"{m['verify_rate']:.0f} invoices/s ({m['verify_count']:.0f} invoices)", "≥ 20,000/s",
         f"{m['verify_rate'] / (L['verify_checked_rate'] * CORES):.2f} × Ed25519 verification on all {CORES} cores "
         f"({L['verify_checked_rate'] * CORES:.0f}/s: one signature per invoice)"),
    ]
    lim_rows = [
        ("durable commit (WAL, synchronous=FULL, 1 row/txn)", f"{L['commit_rate']:.0f} /s"),
        ("Ed25519 signatures", f"{L['sign_rate']:.0f} /s"),
        ("Ed25519 verifications: OpenSSL / as checked (libsodium first, signing.VerifyingKey)",
         f"{L['verify_sig_rate']:.0f} /s / {L['verify_checked_rate']:.0f} /s"),
        ("canonicalize a 10-item sealed invoice (fast path / rfc8785)",
         f"{L['canon_fast_us']:.0f} µs / {L['canon_ref_us']:.0f} µs"),
        ("empty aiohttp handler round trip, loopback", f"{L['http_empty_ms']:.3f} ms"),
    ]
    out = ["| figure | measured | target | beside the limit |", "|---|---|---|---|"]
    out += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    out += ["", "Physical limits measured in the same run:", "", "| limit | value |", "|---|---|"]
    out += [f"| {a} | {b} |" for a, b in lim_rows]
    return "\n".join(out)


def render_sync(rows: list[dict[str, float]], recon: list[dict[str, float]], lims: list[dict[str, float]]) -> str:
    m = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    # The limit beside each figure: one signature checked per invoice, the way the cloud checks it.
    verify = statistics.median(x["verify_checked_rate"] for x in lims)
    out = ["| figure | measured | target | beside the limit |", "|---|---|---|---|"]
    out.append(f"| backlog drain, {m['backlog']:.0f} offline-sealed invoices to the cloud on loopback | "
               f"{m['drain_s']:.1f} s | ≤ 60 s for 100,000 | "
               f"{100000 / m['drain_rate']:.0f} s extrapolated to 100,000 |")
    out.append(f"|   the same as a rate (agent sync + cloud on the same {CORES} cores) | {m['drain_rate']:.0f} invoices/s | — | "
               f"{m['drain_rate'] / (verify * CORES):.2f} × Ed25519 verification on all {CORES} cores ({verify * CORES:.0f}/s) |")
    if recon:
        r = {k: statistics.median(x[k] for x in recon) for k in recon[0]}
        rates = " · ".join(f"{x['reconcile_rate']:.0f}" for x in recon)
        out.append(f"| cloud reconciliation (verify + commit), the cloud alone, batches of {r['batch']:.0f} | "
                   f"{r['reconcile_rate']:.0f} invoices/s (runs: {rates}) | ≥ 5,000/s | "
                   f"{r['reconcile_rate'] / (verify * CORES):.2f} × Ed25519 verification on all {CORES} cores "
                   f"({verify * CORES:.0f}/s) |")
        out.append(f"|   cloud CPU per invoice: service / verification workers | "
                   f"{r['service_cpu_us']:.0f} / {r['workers_cpu_us']:.0f} µs | — | "
                   f"one verification = {1e6 / verify:.0f} µs |")
    out.append(f"| offline sealing of the backlog, in-process (group commit) | {m['offline_seal_rate']:.0f} invoices/s | "
               f"— | in-process seal pipeline |")
    return "\n".join(out)


def render_scale(rows: list[dict[str, float]], lims: list[dict[str, float]], built: dict[str, float],
                 seal8: float | None) -> str:
    """The large-journal figures (and the 8-client figure with the cloud and the sync running)."""
    m = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    L = {k: statistics.median(x[k] for x in lims) for k in lims[0]}
    n = built["count"]
    verify_limit = L["verify_checked_rate"] * CORES
    out = ["| figure | measured | target | beside the limit |", "|---|---|---|---|"]
    if "verify_rate" in m:
        out.append(f"| stalela verify, {n:,.0f}-invoice journal | {m['verify_rate']:.0f} invoices/s "
                   f"({m['verify_count']:,.0f} invoices) | ≥ 20,000/s | {m['verify_rate'] / verify_limit:.2f} × Ed25519 "
                   f"verification on all {CORES} cores ({verify_limit:.0f}/s: one signature per invoice) |")
        out.append(f"|   its CPU per invoice (all its processes), and the rate that makes on {CORES} free cores | "
                   f"{m['verify_cpu_us']:.0f} µs → {CORES * 1e6 / m['verify_cpu_us']:.0f} invoices/s | — | "
                   f"one verification = {1e6 / L['verify_checked_rate']:.0f} µs |")
    if "ratio_p99_1" in m:
        out.append(f"| seal p99, 1 client: {n:,.0f} stored / empty | {m['ratio_p99_1']:.2f} × "
                   f"({m['full_p99_1_ms']:.1f} / {m['empty_p99_1_ms']:.1f} ms) | ≤ 1.2 × | p50 {m['full_p50_1_ms']:.1f} / "
                   f"{m['empty_p50_1_ms']:.1f} ms; one durable commit = {1000 / L['commit_rate']:.2f} ms |")
        out.append(f"| seal p99, 8 clients: {n:,.0f} stored / empty | {m['ratio_p99_8']:.2f} × "
                   f"({m['full_p99_8_ms']:.1f} / {m['empty_p99_8_ms']:.1f} ms) | ≤ 1.2 × | rate {m['full_rate8']:.0f} / "
                   f"{m['empty_rate8']:.0f} invoices/s |")
    if "writer_ratio_p99" in m:
        out.append(f"|   the journal writer alone, in-process, 1 invoice per commit: p99 {n:,.0f} stored / empty | "
                   f"{m['writer_ratio_p99']:.2f} × ({m['writer_full_p99_ms']:.2f} / {m['writer_empty_p99_ms']:.2f} ms) | — | "
                   f"p50 {m['writer_full_p50_ms']:.2f} / {m['writer_empty_p50_ms']:.2f} ms; one durable commit = "
                   f"{1000 / L['commit_rate']:.2f} ms |")
    if n:
        out.append(f"| storage per sealed 10-item invoice, {n:,.0f} stored | {built['bytes_per_invoice']:.0f} B "
                   f"(body {built['body_bytes_avg']:.0f} B) | ≤ 3 KB | includes indexes |")
    if "cloud_rate8" in m:
        beside = (f"{m['cloud_rate8'] / seal8:.2f} × the same load without a cloud ({seal8:.0f}/s); "
                  if seal8 else "")
        out.append(f"| delegated seal, 8 clients, cloud on loopback + sync running | {m['cloud_rate8']:.0f} invoices/s, "
                   f"p50 / p99 {m['cloud_p50_8_ms']:.1f} / {m['cloud_p99_8_ms']:.1f} ms | ≥ 2,000/s, p99 ≤ 25 ms | "
                   f"{beside}{m['cloud_synced_during']:.0f} accepted by the cloud during the load |")
    if "cloud_cpu_daemon_us" in m:
        parts = ("daemon", "sealer", "cloud", "workers", "loadgen")
        total = sum(m[f"cloud_cpu_{k}_us"] for k in parts)
        cores = os.cpu_count() or 1
        out.append(f"|   its CPU per invoice: agent daemon / sealing process / cloud service / cloud workers / "
                   f"load generator, and the rate that makes on {cores} free cores | "
                   + " / ".join(f"{m[f'cloud_cpu_{k}_us']:.0f}" for k in parts)
                   + f" µs = {total:.0f} µs → {cores * 1e6 / total:.0f} invoices/s | — | "
                   f"2,000/s on {cores} cores leaves {cores * 1e6 / 2000:.0f} µs per invoice in all |")
    if n:
        out.append("")
        out.append(f"The {n:,.0f}-invoice journal was built in-process by the agent's own journal writer "
                   f"(`bench/journal.py`) in {built['seconds']:.0f} s ({n / built['seconds']:.0f} invoices/s).")
    return "\n".join(out)


PG_HEADING = "## The cloud on PostgreSQL"


def pg_section(args, previous: Path) -> str:
    """The PostgreSQL section: measured now with `--cloud-db postgresql`, else kept as the file
    had it (its own line says when and at which commit it was measured)."""
    if args.cloud_db != "postgresql":
        text = previous.read_text() if previous.exists() else ""
        start = text.find(PG_HEADING)
        if start < 0:
            return ""
        end = text.find("\n## ", start + len(PG_HEADING))
        return "\n\n" + text[start:end if end >= 0 else len(text)].rstrip()
    from . import pgcloud

    print("the cloud on PostgreSQL…", file=sys.stderr, flush=True)
    row = pgcloud.run(args.quick, args.pg_ledger, pgcloud.admin_url())
    return (f"\n\n{PG_HEADING}\n\n- measured: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, commit {commit_id()}"
            f"{' (quick mode)' if args.quick else ''}, by `./dev bench --cloud-db postgresql` (bench/pgcloud.py)\n\n"
            + pgcloud.render(row))


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--backlog", type=int, default=20000, help="invoices in the sync drain benchmark (0: skip)")
    ap.add_argument("--reconcile", type=int, default=20000,
                    help="invoices in each cloud-alone reconciliation run (0: skip)")
    ap.add_argument("--forward", type=int, default=100_000,
                    help="invoices in the DGI forwarding backlog (bench/forward.py; 0: skip)")
    ap.add_argument("--forward-outlets", type=int, default=100, help="outlets the forwarding backlog spans")
    ap.add_argument("--quick", action="store_true", help="smaller loads (smoke test of the harness)")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    ap.add_argument("--journal", type=int, default=1_000_000,
                    help="invoices in the large journal (verify, p99 stored/empty, storage; 0: skip)")
    ap.add_argument("--no-cloud", action="store_true", help="skip the 8-client figure with a cloud and the sync")
    ap.add_argument("--dashboard-scale", type=float, default=1.0,
                    help="the dashboard's data as a fraction of 10,000 outlets and 10,000,000 ledger entries "
                         "(bench/dashboard.py; 0: skip)")
    ap.add_argument("--cloud-db", choices=["sqlite", "postgresql"], default="sqlite",
                    help="postgresql: also measure the cloud on PostgreSQL (bench/pgcloud.py; databases of its "
                         "own on $STALELA_BENCH_PG_URL or postgres@127.0.0.1:5432, dropped afterwards). "
                         "With sqlite, that section is kept as the last PostgreSQL run wrote it")
    ap.add_argument("--pg-ledger", type=int, default=None,
                    help="ledger entries for the PostgreSQL p99 ratio (default 10,000,000; quick: 20,000)")
    args = ap.parse_args()
    if args.pg_ledger is not None and args.pg_ledger < 1000:
        ap.error("--pg-ledger: at least 1,000 entries")
    if args.cloud_db == "postgresql":  # before the hour of other benchmarks, not after
        from . import pgcloud
        problem = pgcloud.server_problem(pgcloud.admin_url())
        if problem:
            sys.exit(problem)
    started = time.perf_counter()
    runs, lims, scale_rows = [], [], []
    with tempfile.TemporaryDirectory() as big_dir:
        big = built = None
        if args.journal:
            from .journal import build
            count = min(args.journal, 50_000) if args.quick else args.journal
            print(f"large journal: sealing {count} invoices in-process…", file=sys.stderr, flush=True)
            big, seconds = build(Path(big_dir) / "big", count, progress=lambda k: print(
                f"  {k}", file=sys.stderr, flush=True) if k % 100_000 == 0 else None)
            built = {"seconds": seconds, **scale.storage(big.data_dir / "agent.db")}
        for i in range(args.runs):
            print(f"run {i + 1}/{args.runs}: limits…", file=sys.stderr, flush=True)
            lims.append(measure_limits())
            print(f"run {i + 1}/{args.runs}: agent…", file=sys.stderr, flush=True)
            with tempfile.TemporaryDirectory() as d:
                runs.append(one_run(Path(d), args.quick))
            row: dict[str, float] = {}
            n8, n1 = (250, 300) if args.quick else (1000, 1000)
            if big is not None:
                print(f"run {i + 1}/{args.runs}: seal latency, empty journal and {built['count']} stored…",
                      file=sys.stderr, flush=True)
                with tempfile.TemporaryDirectory() as d:
                    row.update(scale.stored_vs_empty(Path(d), big, n8, n1, str(i)))
                    row.update(scale.writer_stored_vs_empty(Path(d), big, 2 * n1, str(i)))
                print(f"run {i + 1}/{args.runs}: stalela verify, {built['count']} invoices…", file=sys.stderr, flush=True)
                row.update(scale.verify_rate(big))
            if not args.no_cloud:
                print(f"run {i + 1}/{args.runs}: 8 clients with the cloud and the sync running…",
                      file=sys.stderr, flush=True)
                with tempfile.TemporaryDirectory() as d:
                    row.update(scale.with_cloud(Path(d), n8))
            scale_rows.append(row)
    table = render(runs, lims)
    scale_table = ""
    if built is not None or not args.no_cloud:
        seal8 = statistics.median(r["seal8_rate"] for r in runs)
        built = built or {"count": 0, "seconds": 1, "bytes_per_invoice": 0, "body_bytes_avg": 0}
        scale_table = ("\n\n## A large journal, and the cloud beside the agent\n\n"
                       + render_scale(scale_rows, lims, built, seal8))
    sync_table = ""
    if args.backlog:
        from .sync import backlog_drain
        print(f"sync: backlog of {args.backlog}…", file=sys.stderr, flush=True)
        with tempfile.TemporaryDirectory() as d:
            sync_rows = [backlog_drain(Path(d), args.backlog)]
        recon = []
        if args.reconcile:
            from .sync import reconcile_throughput
            for i in range(args.runs):
                print(f"cloud reconciliation {i + 1}/{args.runs}: {args.reconcile} invoices…", file=sys.stderr, flush=True)
                with tempfile.TemporaryDirectory() as d:
                    recon.append(reconcile_throughput(Path(d), min(args.reconcile, 5000) if args.quick
                                                      else args.reconcile))
        sync_table = "\n\n## Sync and reconciliation (agent → cloud)\n\n" + render_sync(sync_rows, recon, lims)
    # Device mode: the simulated MCF with 115200-baud wire timing (bench/device.py).
    from . import device as device_bench
    print("device mode: simulated MCF, wire timing…", file=sys.stderr, flush=True)
    device_table = "\n\n## Device mode\n\n" + device_bench.render(device_bench.run(args.runs, args.quick))
    # The local e-MCF API's two-phase round trip beside /v1/invoices (bench/emcf.py).
    from . import emcf as emcf_bench
    print("local e-MCF API: two-phase round trip…", file=sys.stderr, flush=True)
    emcf_table = "\n\n## Local e-MCF API (agent)\n\n" + emcf_bench.render(emcf_bench.run(args.runs, args.quick))
    forward_table = ""
    if args.forward:
        from . import forward as forward_bench
        outlets = min(args.forward_outlets, 10) if args.quick else args.forward_outlets
        count = min(args.forward, 1000) if args.quick else args.forward
        print(f"DGI forwarding: {count} invoices across {outlets} outlets…", file=sys.stderr, flush=True)
        with tempfile.TemporaryDirectory() as d:
            row = forward_bench.forward_backlog(Path(d), outlets, max(1, count // outlets))
        forward_table = ("\n\n## DGI forwarding (cloud → e-MCF simulator)\n\n" + forward_bench.render([row])
                         + "\n\nMeasured from the cloud's start; the simulator answers each call 20 ms late "
                           "and allows 10 pending requests per point of sale (bench/forward.py).")
    dashboard_table = ""
    if args.dashboard_scale:
        from . import dashboard as dashboard_bench
        scale = min(args.dashboard_scale, 0.001) if args.quick else args.dashboard_scale
        print(f"cloud dashboard: page times at scale {scale}…", file=sys.stderr, flush=True)
        dashboard_table = ("\n\n## Cloud dashboard (server time per page)\n\n"
                           + dashboard_bench.render([dashboard_bench.run(scale, 50 if args.quick else 200)])
                           + "\n\nData generated in the database by SQL (bench/dashboard.py); one logged-in "
                             "client; the time is the server's own (`http.request` `ms`), HTML rendering included.")
    pg_table = pg_section(args, args.out)
    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    header = (f"# Benchmarks\n\nGenerated by `./dev bench` (bench/). Medians of {args.runs} runs"
              f"{' (quick mode)' if args.quick else ''}.\n\n- date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC\n"
              f"- commit: {commit_id()}\n- machine: {machine}\n")
    notes_path = ROOT / "bench" / "NOTES.md"
    notes = notes_path.read_text() if notes_path.exists() else ""
    header += f"- `./dev bench` took {(time.perf_counter() - started) / 60:.0f} minutes\n\n"
    args.out.write_text(header + "## Delegated sealing (agent)\n\n" + table + scale_table + sync_table
                        + device_table + emcf_table + forward_table + dashboard_table + pg_table + "\n\n" + notes)
    print(table + scale_table + sync_table + device_table + emcf_table + forward_table + dashboard_table + pg_table)


if __name__ == "__main__":
    main()
