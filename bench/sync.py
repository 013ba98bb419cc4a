"""Backlog drain after an outage, and the cloud's reconciliation throughput.

A real cloud process and an agent enrolled with it: the backlog is sealed offline in-process
through the agent's own journal (with credentials the cloud issued). `backlog_drain` then uploads
it with the agent's SyncWorker over loopback (agent and cloud costs together);
`reconcile_throughput` posts it from request bodies built beforehand with a lean client, so what
it measures is the cloud alone: every credential, signature, block, window and chain link
verified, and the ledger committed.
"""
from __future__ import annotations

import asyncio
import http.client
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent.cloud_client import CloudClient  # noqa: E402
from agent.config import load_config  # noqa: E402
from agent.renewal import fetch_credential  # noqa: E402
from agent.service import AgentService  # noqa: E402
from agent.store.db import connect  # noqa: E402
from agent.sync import SyncWorker  # noqa: E402
from tests.support import OUTLET, CloudProcess, EnrolledAgent  # noqa: E402

try:  # journals that store bodies compressed (agent/store/bodies.py)
    from agent.store.bodies import unpack as _body_text  # noqa: E402
except ImportError:  # journals that store the JSON text itself
    def _body_text(value: str) -> str:
        return value

from .workload import ten_item_invoice  # noqa: E402

BLOCK = 10000


def _start_cloud(workdir: Path, workers: int | None) -> CloudProcess:
    cloud = CloudProcess(workdir / "cloud")
    extra = ["--block-size", str(BLOCK)]
    if workers is not None:
        extra += ["--workers", str(workers)]
    cloud.start(20, *extra)
    return cloud


def _seal_backlog(workdir: Path, cloud: CloudProcess, count: int, outlet: str = OUTLET
                  ) -> tuple[EnrolledAgent, float]:
    """Enroll an agent, fetch enough credentials, seal `count` invoices offline: (agent, seconds).

    `outlet`: a new outlet of that id is created for it (several agents may share one cloud)."""
    folder = workdir / "agent" if outlet == OUTLET else workdir / f"agent-{outlet}"
    agent = EnrolledAgent(folder, cloud, cloud.add_outlet(outlet), block_size=BLOCK)
    config = load_config(agent.data_dir)
    service = AgentService.open(config)
    try:
        async def credentials():
            async with CloudClient(config.cloud_url, token=agent.cloud_token, timeout=120) as client:
                have = BLOCK  # enrollment fetched the first one
                while have < count:
                    await fetch_credential(service.journal, service.identity, service.config, client)
                    have += BLOCK
        asyncio.run(credentials())
        # Seal the backlog offline (in-process, group commit) while the cloud is idle.
        t = time.perf_counter()
        pending = []
        for i in range(count):
            pending.append(service.journal.submit(service.prepare(ten_item_invoice(f"B-{i}"))))
            if len(pending) >= 256:
                for f in pending:
                    f.result()
                pending.clear()
        for f in pending:
            f.result()
        return agent, time.perf_counter() - t
    finally:
        service.close()


def backlog_drain(workdir: Path, count: int, batch: int = 1000, workers: int | None = None) -> dict[str, float]:
    """Seal `count` invoices offline, then time the agent's SyncWorker uploading all of them."""
    cloud = _start_cloud(workdir, workers)
    try:
        agent, seal_s = _seal_backlog(workdir, cloud, count)
        config = load_config(agent.data_dir)

        async def drain():
            async with CloudClient(config.cloud_url, token=agent.cloud_token, timeout=300) as c:
                worker = SyncWorker(config.db_path, c, batch_size=batch, attempts=3)
                try:
                    t0 = time.perf_counter()
                    n = await worker.drain()
                    return n, time.perf_counter() - t0
                finally:
                    worker.close()
        n, drain_s = asyncio.run(drain())
        counts = agent.sync_state_counts()
        if counts.get("accepted", 0) != count:
            raise RuntimeError(f"backlog not fully accepted: {counts}")
        return {"backlog": count, "drain_s": drain_s, "drain_rate": n / drain_s, "offline_seal_rate": count / seal_s}
    finally:
        cloud.stop()


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a live process (Linux /proc; 0 where unavailable)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


def _database_cpu() -> dict[int, float] | None:
    """{backend pid: CPU seconds} of the PostgreSQL server processes serving the cloud's database
    (the one `STALELA_CLOUD_DATABASE_URL` names; None on SQLite). The server shares the cores:
    its CPU per invoice is part of what reconciliation costs. A backend that starts during the
    run counts from zero; the server's background processes (WAL writer, checkpointer) are
    shared with whatever else uses the server and are left out."""
    url = os.environ.get("STALELA_CLOUD_DATABASE_URL", "")
    if not url.startswith(("postgres://", "postgresql://")):
        return None
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        pids = [r[0] for r in conn.execute("SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                                           "AND pid <> pg_backend_pid()")]
    return {pid: _cpu_seconds(pid) for pid in pids}


def _children(pid: int) -> list[int]:
    """Every descendant of a process (the cloud's forkserver and verifier workers)."""
    try:
        parents = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open(f"/proc/{entry}/stat") as f:
                        parents[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
                except OSError:
                    continue
    except OSError:
        return []
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        for child, ppid in parents.items():
            if ppid == parent:
                found.append(child)
                todo.append(child)
    return found


def request_bodies(agent: EnrolledAgent, count: int, batch: int) -> list[bytes]:
    """The agent's pending invoices as `POST /v1/reconcile` bodies of `batch`, in sealing order,
    exactly as its outbox sends them (the stored JSON texts joined)."""
    conn = connect(agent.data_dir / "agent.db", readonly=True)
    try:
        texts = [_body_text(r[0]) for r in conn.execute(
            "SELECT body FROM invoices WHERE status='sealed' AND sync_state='pending' ORDER BY seq")]
    finally:
        conn.close()
    if len(texts) != count:
        raise RuntimeError(f"expected {count} sealed invoices, found {len(texts)}")
    return [('{"invoices":[' + ",".join(texts[i:i + batch]) + "]}").encode("utf-8")
            for i in range(0, count, batch)]


def reconcile_throughput(workdir: Path, count: int, batch: int = 1000,
                         workers: int | None = None) -> dict[str, float]:
    """The cloud alone: invoices/s verified and committed by `POST /v1/reconcile`.

    Every request body is built before the clock starts, exactly as the agent's outbox sends
    them (the stored JSON texts joined), and posted in sealing order over one keep-alive
    connection by `http.client`, whose cost per request is a few hundred microseconds: what the
    clock sees is the cloud's work. Batches go one after the other because each one's chain
    continues the previous one's. `workers` passes `--workers` to the cloud (None: its default).
    """
    cloud = _start_cloud(workdir, workers)
    try:
        agent, _ = _seal_backlog(workdir, cloud, count)
        bodies = request_bodies(agent, count, batch)
        headers = {"Authorization": f"Bearer {agent.cloud_token}", "Content-Type": "application/json"}
        http_conn = http.client.HTTPConnection("127.0.0.1", cloud.port, timeout=300)
        accepted = 0
        helpers = _children(cloud.proc.pid)
        cpu0 = _cpu_seconds(cloud.proc.pid), [_cpu_seconds(p) for p in helpers]
        db0 = _database_cpu()
        try:
            t0 = time.perf_counter()
            for body in bodies:
                http_conn.request("POST", "/v1/reconcile", body=body, headers=headers)
                resp = http_conn.getresponse()
                data = resp.read()
                if resp.status != 200:
                    raise RuntimeError(f"cloud answered {resp.status}: {data[:300]!r}")
                answer = json.loads(data)
                if answer["rejected"] or answer["duplicate"]:
                    bad = next(r for r in answer["results"] if r["status"] != "accepted")
                    raise RuntimeError(f"not every invoice was accepted: {bad}")
                accepted += answer["accepted"]
            elapsed = time.perf_counter() - t0
        finally:
            http_conn.close()
        if accepted != count:
            raise RuntimeError(f"{accepted} of {count} invoices accepted")
        service_cpu = _cpu_seconds(cloud.proc.pid) - cpu0[0]
        workers_cpu = sum(_cpu_seconds(p) for p in helpers) - sum(cpu0[1])
        out = {"invoices": count, "batch": batch, "seconds": elapsed, "reconcile_rate": count / elapsed,
               # CPU per invoice, less sensitive than the rate to what else the machine runs.
               "service_cpu_us": service_cpu / count * 1e6, "workers_cpu_us": workers_cpu / count * 1e6}
        if db0 is not None:
            db1 = _database_cpu() or {}
            out["database_cpu_us"] = sum(t - db0.get(pid, 0.0) for pid, t in db1.items()) / count * 1e6
        return out
    finally:
        cloud.stop()


def main() -> None:
    """`python -m bench.sync [--count N] [--postgresql]`: the cloud-alone reconciliation figure by
    itself, with the CPU per invoice of each process (what to compare when the machine is busy)."""
    import argparse
    import tempfile

    ap = argparse.ArgumentParser(prog="python -m bench.sync", description="The cloud's reconciliation, the cloud "
                                 "alone: rate and CPU per invoice of each process.")
    ap.add_argument("--count", type=int, default=10_000, help="invoices (batches of --batch), default 10,000")
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--postgresql", action="store_true",
                    help="the cloud on a scratch PostgreSQL database (bench/pgcloud.py's server and rules)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as folder:
        if args.postgresql:
            from . import pgcloud

            url = pgcloud.admin_url()
            problem = pgcloud.server_problem(url)
            if problem:
                sys.exit(problem)
            with pgcloud.Databases(url).scratch("reconcile") as db, pgcloud._cloud_database(db):
                r = reconcile_throughput(Path(folder), args.count, args.batch)
        else:
            r = reconcile_throughput(Path(folder), args.count, args.batch)
    cpu = f"service {r['service_cpu_us']:.0f} µs, verifier workers {r['workers_cpu_us']:.0f} µs"
    if "database_cpu_us" in r:
        cpu += f", PostgreSQL backend {r['database_cpu_us']:.0f} µs"
    print(f"reconciliation, cloud alone, {'PostgreSQL' if args.postgresql else 'SQLite'}, {r['invoices']:,} "
          f"invoices in batches of {r['batch']:,}: {r['reconcile_rate']:.0f} invoices/s; CPU per invoice: {cpu}")


if __name__ == "__main__":
    main()
