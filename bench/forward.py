"""DGI forwarding: a backlog of sealed invoices in the cloud's ledger, forwarded to the e-MCF
simulator (real processes: `stalela sim emcf run`, `stalela cloud serve --dgi-url`).

The simulator answers every call `latency_ms` late and keeps its limits (10 pending requests
per point of sale; an optional rate per point of sale). The forwarder takes each outlet's
invoices one after the other (phase 1, then confirm: two calls) and outlets side by side, so
the bound its latency and limits allow is

    per outlet:  invoices × max(2 × latency, 2 / rate)
    the backlog: that × ceil(outlets / concurrency)

(plus one pending-list look per outlet taken up). Run alone:
    python -m bench.forward --outlets 10 --per-outlet 100
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.forwarding.fwd_support import EmcfSim, fill_ledger, stalela  # noqa: E402
from tests.support import CloudProcess  # noqa: E402


def _normalized(url: str) -> int:
    with urllib.request.urlopen(url + "/_sim/stats", timeout=30) as resp:
        return json.loads(resp.read())["normalized"]


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
        for outlet_id in ledger:  # tokens first: forwarding starts with the cloud
            isf = "ISF-" + outlet_id.split("-")[1]
            stalela("cloud", "dgi", "token", "--data", str(cloud.data_dir), "--outlet", outlet_id,
                    "--token-file", "-", stdin=sim.token("A1234567B", isf))
        t = time.perf_counter()
        cloud.start(60, "--workers", "0", "--dgi-url", sim.url, "--dgi-concurrency", str(concurrency),
                    "--dgi-poll", "0.1")
        deadline = time.monotonic() + timeout
        done = 0
        while done < total and time.monotonic() < deadline:
            time.sleep(0.25)
            done = _normalized(sim.url)
        forward_s = time.perf_counter() - t
    finally:
        cloud.stop()
        sim.stop()
    per_call = latency_ms / 1000
    per_invoice = max(2 * per_call, 2 / rate if rate else 0.0)
    bound = per_outlet * per_invoice * math.ceil(outlets / concurrency)
    return {"invoices": total, "outlets": outlets, "latency_ms": latency_ms, "concurrency": concurrency,
            "normalized": done, "fill_s": fill_s, "forward_s": forward_s, "bound_s": bound,
            "rate": done / forward_s if forward_s else 0.0}


def render(rows: list[dict[str, float]]) -> str:
    out = ["| figure | measured | bound from the DGI's latency and limits | ratio |", "|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['invoices']:,.0f} invoices, {r['outlets']:.0f} outlets, {r['latency_ms']:.0f} ms per call, "
                   f"{r['concurrency']:.0f} outlets at a time ({r['normalized']:,.0f} normalized) | "
                   f"{r['forward_s']:.1f} s ({r['rate']:.0f} invoices/s) | {r['bound_s']:.1f} s | "
                   + (f"{r['forward_s'] / r['bound_s']:.2f} × |" if r["bound_s"] else "— |"))
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
