"""Device-mode latency: a 10-item invoice sealed by the simulated MCF with 115200-baud wire timing.

The simulator runs in this process on a real pseudo-terminal; the agent is the real daemon
(subprocess) with policy ["device"]. For every invoice the simulator's side is metered: the
bytes that crossed the line both ways (every frame the agent sent, every answer) and the time
the simulator spent computing answers (fiscal rules + its own fsync'ed fiscal memory). The
bound is what no SFE can beat on that device:

    bound = (bytes in + bytes out) x 86.8 us   +   simulator processing time

and the agent's HTTP latency is reported beside it, as a ratio (target <= 1.25 x bound).

Usage: python -m bench.device [--invoices 30]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from agent.config import write_default_config  # noqa: E402
from simulator.device import DeviceOptions  # noqa: E402
from simulator.engine import BYTE_TIME_115200, MCFEngine  # noqa: E402
from simulator.pty_link import PtyLink  # noqa: E402
from simulator.state import FiscalState  # noqa: E402
from tests.support import NIF, AgentHarness, free_port  # noqa: E402

from .workload import ten_item_invoice  # noqa: E402

TARGET_RATIO = 1.25


class Meter:
    """Wraps MCFEngine.respond: bytes in/out, frames, and computing time, since the last reset."""

    def __init__(self, engine: MCFEngine) -> None:
        self.engine = engine
        self._respond = engine.respond
        self._lock = threading.Lock()
        engine.respond = self._metered  # type: ignore[method-assign]
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self.bytes_in = self.bytes_out = self.frames = 0
            self.processing = 0.0

    def _metered(self, chunk: bytes):
        t = time.perf_counter()
        emissions = self._respond(chunk)
        elapsed = time.perf_counter() - t
        with self._lock:
            self.bytes_in += len(chunk)
            self.bytes_out += sum(len(e.data) for e in emissions)
            self.frames += chunk.count(b"\x01")
            self.processing += elapsed
        return emissions


def one_run(workdir: Path, invoices: int = 30) -> dict[str, float]:
    engine = MCFEngine(workdir / "sim" / "state.json", options=DeviceOptions(wire_timing=True),
                       provision=FiscalState.new(nif=NIF))
    meter = Meter(engine)
    pty = PtyLink(engine, workdir / "ttyMCF")
    pty.start()
    h = AgentHarness(workdir / "agent")
    write_default_config(h.data_dir, agent__port=h.port, cloud__url=f"http://127.0.0.1:{free_port()}",
                         credential__check_interval=3600, signer__policy=["device"],
                         device__url=str(workdir / "ttyMCF"))
    latencies, bounds, wires, procs, sizes, frames = [], [], [], [], [], []
    try:
        h.start()
        time.sleep(0.5)  # let the start-up poll (C1h, 2Bh, C2h) finish
        for i in range(invoices + 2):
            meter.reset()
            t = time.perf_counter()
            status, body, _ = h.post("/v1/invoices", ten_item_invoice(f"dev-bench-{i}"))
            elapsed = time.perf_counter() - t
            if status != 201 or body.get("mode") != "device":
                raise RuntimeError(f"device seal failed: {status} {body}")
            if i < 2:
                continue  # warm-up (first link sync)
            wire = (meter.bytes_in + meter.bytes_out) * BYTE_TIME_115200
            latencies.append(elapsed)
            wires.append(wire)
            procs.append(meter.processing)
            bounds.append(wire + meter.processing)
            sizes.append(meter.bytes_in + meter.bytes_out)
            frames.append(meter.frames)
    finally:
        h.stop()
        pty.stop()
    ratios = [lat / b for lat, b in zip(latencies, bounds)]
    return {
        "dev_p50_ms": statistics.median(latencies) * 1000,
        "dev_p99_ms": max(latencies) * 1000 if len(latencies) < 100 else
        sorted(latencies)[int(0.99 * (len(latencies) - 1))] * 1000,
        "dev_wire_ms": statistics.median(wires) * 1000,
        "dev_proc_ms": statistics.median(procs) * 1000,
        "dev_bound_ms": statistics.median(bounds) * 1000,
        "dev_bytes": statistics.median(sizes),
        "dev_frames": statistics.median(frames),
        "dev_ratio": statistics.median(ratios),
    }


def run(runs: int = 1, quick: bool = False) -> list[dict[str, float]]:
    out = []
    for _ in range(runs):
        with tempfile.TemporaryDirectory() as d:
            out.append(one_run(Path(d), 10 if quick else 30))
    return out


def rows(results: list[dict[str, float]]) -> list[tuple[str, str, str, str]]:
    m = {k: statistics.median(r[k] for r in results) for k in results[0]}
    return [
        ("device seal over HTTP, 10 items, wire timing on: p50 / max", f"{m['dev_p50_ms']:.0f} / {m['dev_p99_ms']:.0f} ms",
         f"≤ {TARGET_RATIO} × (wire + processing)",
         f"p50 = {m['dev_ratio']:.2f} × bound ({m['dev_bound_ms']:.0f} ms)"),
        ("  wire time of the invoice's frames", f"{m['dev_wire_ms']:.0f} ms",
         "—", f"{m['dev_frames']:.0f} frames, {m['dev_bytes']:.0f} bytes × 86.8 µs (115200 8N1)"),
        ("  simulator processing (rules + fsync'ed fiscal memory)", f"{m['dev_proc_ms']:.1f} ms", "—", ""),
    ]


def render(results: list[dict[str, float]]) -> str:
    out = ["| figure | measured | target | beside the limit |", "|---|---|---|---|"]
    out += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows(results)]
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.device")
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    print(render(run(args.runs, args.quick)))


if __name__ == "__main__":
    main()
