"""A large journal, built quickly: invoices sealed in-process by the agent's own journal writer.

Why not through HTTP: a 1,000,000-invoice journal at the HTTP rate (≈ 1,300/s) takes ≈ 13
minutes. Here the writer seals exactly as the daemon's does (number, signature, chain, canonical
stored text, compression, indexes) but without the HTTP and validation in front: a few dozen
requests are validated once (`AgentService.prepare`) and every job is a copy of one of them
under a new request_id (its fingerprint computed afresh), committed in large batches. What is
built is a journal `stalela verify` accepts, with the row sizes and indexes of a real one.
"""
from __future__ import annotations

import os
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent.config import load_config  # noqa: E402
from agent.journal import SealJob  # noqa: E402
from agent.service import AgentService  # noqa: E402
from fiscal.canonical import compose, sha256_hex  # noqa: E402
from tests.support import AgentHarness  # noqa: E402

from .workload import ten_item_invoice  # noqa: E402

TEMPLATES = 32
BATCH = 2000  # invoices per commit while building (the daemon commits what is waiting, ≤ 64)


def _copy(template: SealJob, request_id: str) -> SealJob:
    request = dict(template.request, request_id=request_id, invoice_number=f"T/{request_id}")
    fingerprint = sha256_hex(compose(request, template.fragments).encode("utf-8"))
    return replace(template, request=request, fingerprint=fingerprint, future=type(template.future)(),
                   waiter=None)


def build(data_dir: Path, count: int, *, prefix: str = "J", progress=None) -> tuple[AgentHarness, float]:
    """An enrolled agent data folder holding `count` sealed 10-item invoices: (harness, seconds)."""
    shutil.rmtree(data_dir, ignore_errors=True)
    data_dir.mkdir(parents=True)
    harness = AgentHarness(data_dir)
    harness.add_credential(harness.credential(1, 5_000_000))
    config = load_config(data_dir)
    service = AgentService.open(config)
    # A larger batch than the daemon's and a larger page cache: same code path, same rows, fewer
    # fsyncs and fewer index pages read again (each invoice touches random leaves of two indexes).
    service.journal._max_batch = BATCH
    service.journal._wconn.execute("PRAGMA cache_size=-262144")
    t0 = time.perf_counter()
    try:
        templates = [service.prepare(ten_item_invoice(f"{prefix}-template-{k}")) for k in range(TEMPLATES)]
        pending = []
        for i in range(count):
            pending.append(service.journal.submit(_copy(templates[i % TEMPLATES], f"{prefix}-{i}")))
            if len(pending) >= BATCH:
                for f in pending:
                    f.result()
                pending.clear()
                if progress:
                    progress(i + 1)
        for f in pending:
            f.result()
    finally:
        service.close()
    return harness, time.perf_counter() - t0


def clone(source: Path, target: Path) -> None:
    """A copy of a built data folder (the database checkpointed first, so one file holds it)."""
    import sqlite3

    conn = sqlite3.connect(source / "agent.db")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(source, target)


if __name__ == "__main__":  # python -m bench.journal N DIR: build and report the rate
    n, where = int(sys.argv[1]), Path(sys.argv[2])
    _, seconds = build(where, n, progress=lambda k: print(f"{k}…", file=sys.stderr, flush=True)
                       if k % 100_000 == 0 else None)
    print(f"{n} invoices in {seconds:.1f} s ({n / seconds:.0f}/s), {os.path.getsize(where / 'agent.db') / n:.0f} B each")
