"""The local e-MCF API's two-phase round trip beside `POST /v1/invoices` (target <= 1.5 x).

One client, as a cashier: the same sale sealed through the POS API (one request) and through the
e-MCF API (`POST /api/invoice`, then `PUT /api/invoice/{uid}/confirm` — the time a client waits
for both). The two kinds of sale alternate, so the machine's drift falls on both alike. The agent
is the real daemon (subprocess) in delegated mode; the client is a keep-alive http.client
connection, the same for both paths.

Usage: python -m bench.emcf [--sales 300]
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


def one_run(workdir: Path, sales: int = 300) -> dict[str, float]:
    h = AgentHarness(workdir / "agent")
    h.add_credential(h.credential(1, 2 * sales + 100))
    h.start()
    v1, emcf = [], []
    try:
        conn = http.client.HTTPConnection("127.0.0.1", h.port, timeout=30)
        for i in range(sales + 10):
            t = time.perf_counter()
            status, body = _call(conn, "POST", "/v1/invoices", h.api_key,
                                 {**SAMPLE, "request_id": f"b-v1-{i}", "invoice_number": f"V1/{i}"})
            v1_s = time.perf_counter() - t
            if status != 201:
                raise RuntimeError(f"/v1/invoices: {status} {body}")
            t = time.perf_counter()
            status, phase1 = _call(conn, "POST", "/api/invoice", h.api_key, _emcf_body(f"EM/{i}"))
            if status != 200 or "uid" not in phase1:
                raise RuntimeError(f"/api/invoice: {status} {phase1}")
            status, sealed = _call(conn, "PUT", f"/api/invoice/{phase1['uid']}/confirm", h.api_key,
                                   {"total": phase1["total"], "vtotal": phase1["vtotal"]})
            emcf_s = time.perf_counter() - t
            if status != 200 or "codeDEFDGI" not in sealed:
                raise RuntimeError(f"confirm: {status} {sealed}")
            if i >= 10:  # warm-up
                v1.append(v1_s)
                emcf.append(emcf_s)
        conn.close()
    finally:
        h.stop()

    def p99(xs: list[float]) -> float:
        return sorted(xs)[int(0.99 * (len(xs) - 1))]

    return {"v1_p50_ms": statistics.median(v1) * 1000, "v1_p99_ms": p99(v1) * 1000,
            "emcf_p50_ms": statistics.median(emcf) * 1000, "emcf_p99_ms": p99(emcf) * 1000,
            "ratio_p50": statistics.median(emcf) / statistics.median(v1), "ratio_p99": p99(emcf) / p99(v1)}


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
            f"(target ≤ {TARGET_RATIO} ×) |\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sales", type=int, default=300)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        print(render([one_run(Path(tmp), args.sales)]))


if __name__ == "__main__":
    main()
