"""The local e-MCF API's two-phase round trip beside `POST /v1/invoices` (target <= 1.5 x).

One client, as a cashier: the same sale sealed through the POS API (one request) and through the
e-MCF API (`POST /api/invoice`, then `PUT /api/invoice/{uid}/confirm` — the time a client waits
for both). The two kinds of sale alternate, so the machine's drift falls on both alike. The agent
is the real daemon (subprocess) in delegated mode; the client is a keep-alive http.client
connection, the same for both paths. Beside the latencies, the daemon's CPU per sale of each
path (its threads' on-CPU time from /proc/PID/task/*/schedstat, counted from the start of one
sale to the start of the next, so a write done after the answer falls on its own sale): on this
shared machine the CPU varies much less than the wall clock.

Usage: python -m bench.emcf [--sales 300] [--runs 1]  (with several runs: each run's ratios, then
the medians' table)
"""
from __future__ import annotations

import argparse
import http.client
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from fiscal.examples import SAMPLE  # noqa: E402
from tests.support import NIF, AgentHarness  # noqa: E402

TARGET_RATIO = 1.5


def _emcf_body(rn: str) -> dict:
    # The DGI's sample sale as an e-MCF client sends it (the same sale as SAMPLE on /v1).
    return {"nif": NIF, "rn": rn, "mode": "ttc", "isf": None, "type": "FV",
            "items": [{"code": "EAU", "name": "EAU", "type": "BIE", "price": 720.0, "quantity": 5.0, "taxGroup": "A"},
                      {"code": "LAIT", "name": "LAIT GR", "type": "BIE", "price": 464.0, "quantity": 1.0,
                       "taxGroup": "B"}],
            "operator": {"id": None, "name": "Jan"}, "client": None,
            "payment": [{"name": "ESPECES", "amount": 5000.0}]}


def _call(conn: http.client.HTTPConnection, method: str, path: str, key: str, body: dict) -> tuple[int, dict]:
    conn.request(method, path, json.dumps(body), {"Authorization": f"Bearer {key}",
                                                  "Content-Type": "application/json"})
    resp = conn.getresponse()
    return resp.status, json.loads(resp.read() or b"null")


def _cpu_ns(pid: int) -> int:
    """The process's on-CPU time so far, all its threads (0 where /proc has no schedstat)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):  # a thread that ended meanwhile
            pass
    return total


def one_run(workdir: Path, sales: int = 300) -> dict[str, float]:
    h = AgentHarness(workdir / "agent")
    h.add_credential(h.credential(1, 2 * sales + 100))
    h.start()
    v1, emcf, v1_cpu, emcf_cpu = [], [], [], []
    pid = h.proc.pid
    try:
        conn = http.client.HTTPConnection("127.0.0.1", h.port, timeout=30)
        cpu_at = _cpu_ns(pid)
        for i in range(sales + 10):
            t = time.perf_counter()
            status, body = _call(conn, "POST", "/v1/invoices", h.api_key,
                                 {**SAMPLE, "request_id": f"b-v1-{i}", "invoice_number": f"V1/{i}"})
            v1_s = time.perf_counter() - t
            if status != 201:
                raise RuntimeError(f"/v1/invoices: {status} {body}")
            cpu_mid = _cpu_ns(pid)
            t = time.perf_counter()
            status, phase1 = _call(conn, "POST", "/api/invoice", h.api_key, _emcf_body(f"EM/{i}"))
            if status != 200 or "uid" not in phase1:
                raise RuntimeError(f"/api/invoice: {status} {phase1}")
            status, sealed = _call(conn, "PUT", f"/api/invoice/{phase1['uid']}/confirm", h.api_key,
                                   {"total": phase1["total"], "vtotal": phase1["vtotal"]})
            emcf_s = time.perf_counter() - t
            if status != 200 or "codeDEFDGI" not in sealed:
                raise RuntimeError(f"confirm: {status} {sealed}")
            cpu_end = _cpu_ns(pid)
            if i >= 10:  # warm-up
                v1.append(v1_s)
                emcf.append(emcf_s)
                v1_cpu.append(cpu_mid - cpu_at)
                emcf_cpu.append(cpu_end - cpu_mid)
            cpu_at = cpu_end
        conn.close()
    finally:
        h.stop()

    def p99(xs: list[float]) -> float:
        return sorted(xs)[int(0.99 * (len(xs) - 1))]

    return {"v1_p50_ms": statistics.median(v1) * 1000, "v1_p99_ms": p99(v1) * 1000,
            "emcf_p50_ms": statistics.median(emcf) * 1000, "emcf_p99_ms": p99(emcf) * 1000,
            "ratio_p50": statistics.median(emcf) / statistics.median(v1), "ratio_p99": p99(emcf) / p99(v1),
            "v1_cpu_us": statistics.mean(v1_cpu) / 1000, "emcf_cpu_us": statistics.mean(emcf_cpu) / 1000}


def run(runs: int = 1, quick: bool = False) -> list[dict[str, float]]:
    out = []
    for _ in range(runs):
        with tempfile.TemporaryDirectory() as tmp:
            out.append(one_run(Path(tmp), sales=40 if quick else 300))
    return out


def render(rows: list[dict[str, float]]) -> str:
    m = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    return ("| figure | value | beside |\n|---|---|---|\n"
            f"| `POST /v1/invoices`, 1 client | p50 {m['v1_p50_ms']:.1f} ms, p99 {m['v1_p99_ms']:.1f} ms | the reference |\n"
            f"| e-MCF two-phase (`POST /api/invoice` + `PUT …/confirm`), 1 client | p50 {m['emcf_p50_ms']:.1f} ms, "
            f"p99 {m['emcf_p99_ms']:.1f} ms | p50 = {m['ratio_p50']:.2f} × and p99 = {m['ratio_p99']:.2f} × /v1 "
            f"(target ≤ {TARGET_RATIO} ×) |\n"
            f"| the daemon's CPU per sale | /v1 {m['v1_cpu_us']:.0f} µs, e-MCF {m['emcf_cpu_us']:.0f} µs | "
            f"{m['emcf_cpu_us'] / m['v1_cpu_us']:.2f} × |\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sales", type=int, default=300)
    ap.add_argument("--runs", type=int, default=1)
    args = ap.parse_args()
    rows = []
    for i in range(args.runs):
        with tempfile.TemporaryDirectory() as tmp:
            rows.append(r := one_run(Path(tmp), args.sales))
        print(f"run {i + 1}: p50 {r['ratio_p50']:.2f} ×, p99 {r['ratio_p99']:.2f} ×, CPU per sale /v1 "
              f"{r['v1_cpu_us']:.0f} µs, e-MCF {r['emcf_cpu_us']:.0f} µs", file=sys.stderr, flush=True)
    print(render(rows))


if __name__ == "__main__":
    main()
