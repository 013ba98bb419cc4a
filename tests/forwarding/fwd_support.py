"""Real processes for the DGI forwarding tests (and bench/forward.py): the e-MCF simulator, the
cloud with forwarding on, and a ledger filled beforehand through the cloud's own service."""
from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from aiohttp.test_utils import BaseTestServer
from aiohttp.web import ServerRunner

from tests.support import ROOT, CloudProcess, _Process, python_path


class EmcfTestServer(BaseTestServer):
    """The e-MCF simulator's service in the test's loop (aiohttp's TestServer for an Application)."""

    def __init__(self, store, faults=None, limits=None, **kwargs: Any):
        self._emcf = (store, faults, limits)
        super().__init__(**kwargs)

    async def _make_runner(self, **kwargs: Any) -> ServerRunner:
        from simulator.emcf.app import make_server
        return ServerRunner(make_server(*self._emcf), **kwargs)


def _env() -> dict[str, str]:
    # At each call: the test's cloud database (conftest.py) is in the environment by then.
    return dict(os.environ, PYTHONPATH=python_path())


def cloud_config(data_dir: Path, **settings: Any):
    """The configuration of a cloud in this process, on the test's database (conftest.py)."""
    from cloud_stub.config import DATABASE_URL_ENV, CloudConfig
    return CloudConfig(data_dir=data_dir, database_url=os.environ.get(DATABASE_URL_ENV) or None, **settings)


def cloud_count(data_dir: Path, sql: str) -> int:
    """One count read straight from the cloud's database (SQLite file or PostgreSQL schema)."""
    from cloud_stub.config import DATABASE_URL_ENV
    url = os.environ.get(DATABASE_URL_ENV)
    if url:
        import psycopg
        with psycopg.connect(url) as conn:
            return conn.execute(sql).fetchone()[0]
    conn = sqlite3.connect(data_dir / "cloud.sqlite3")
    try:
        return conn.execute(sql).fetchone()[0]
    finally:
        conn.close()


def stalela(*args: str, check: bool = True, stdin: str | None = None) -> subprocess.CompletedProcess:
    res = subprocess.run([sys.executable, "-m", "agent", *args], capture_output=True, text=True, cwd=ROOT,
                         env=_env(), input=stdin)
    if check and res.returncode != 0:
        raise RuntimeError(f"stalela {' '.join(args)}: {res.stderr or res.stdout}")
    return res


class EmcfSim(_Process):
    """`stalela sim emcf run` as a subprocess on a free port."""

    def __init__(self, state: Path):
        self.state = state
        self.proc: subprocess.Popen | None = None
        self.url = ""

    def start(self, *extra: str, timeout: float = 20) -> "EmcfSim":
        self.log = open(self.state.with_suffix(".log"), "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "agent", "sim", "emcf", "run", "--state", str(self.state),
                                      "--port", "0", *extra], stdout=subprocess.PIPE, stderr=self.log, cwd=ROOT,
                                     env=_env(), text=True)
        deadline = time.monotonic() + timeout
        line = self.proc.stdout.readline()
        if not line.startswith("emcf: ") or time.monotonic() > deadline:
            raise RuntimeError(f"the e-MCF simulator did not start: {line!r}")
        self.url = line.split()[1]
        return self

    def token(self, nif: str, isf: str, ttl: int = 86400) -> str:
        """Issued in this process with the simulator's own secret (as `sim emcf token` does)."""
        from simulator.emcf.store import Store
        from simulator.emcf.tokens import issue
        store = Store(self.state)
        try:
            return issue(store.secret, nif, isf, ttl)
        finally:
            store.close()

    def token_by_cli(self, nif: str, isf: str, ttl: int = 86400) -> str:
        return stalela("sim", "emcf", "token", "--state", str(self.state), "--nif", nif, "--isf", isf,
                       "--ttl", str(ttl)).stdout.strip()

    def fault(self, *assignments: str) -> None:
        stalela("sim", "emcf", "fault", "--url", self.url, *assignments)

    def stats(self) -> dict:
        import urllib.request
        with urllib.request.urlopen(self.url + "/_sim/stats", timeout=10) as resp:
            return json.loads(resp.read())

    def confirmed(self) -> list[dict]:
        """Every normalization, in the order the simulator made them: {nif, isf, rn, uid, code, counters}."""
        conn = sqlite3.connect(self.state)
        try:
            rows = conn.execute("SELECT nif, isf, rn, uid, code, counters, nim FROM requests "
                                "WHERE status = 'confirmed' ORDER BY confirm_seq").fetchall()
        finally:
            conn.close()
        return [dict(zip(("nif", "isf", "rn", "uid", "code", "counters", "nim"), r)) for r in rows]


def fill_ledger(data_dir: Path, outlets: int, per_outlet: int, nif: str = "A1234567B",
                batch: int = 500) -> dict[str, list[str]]:
    """Outlets OUT-001.. with `per_outlet` cloud-sealed invoices each, sealed by the cloud's own
    signer in this process (the cloud process is not running yet), `batch` per transaction.
    Returns {outlet: [invoice id in ledger order]}."""
    from cloud_stub import registry, signer
    from cloud_stub.service import CloudService
    from fiscal.models import InvoiceRequest

    service = CloudService(cloud_config(data_dir, audit_interval=0, verify_workers=0))
    out: dict[str, list[str]] = {}
    try:
        try:
            service.add_merchant(nif, f"MERCHANT {nif}")
        except Exception:
            pass  # already there
        for o in range(1, outlets + 1):
            outlet_id = f"OUT-{o:03d}"
            service.add_outlet(outlet_id, nif, outlet_id, isf=f"ISF-{o:03d}")
            with service.store.read() as tx:
                outlet = registry.get_outlet(tx, outlet_id)
            ids: list[str] = []
            for start in range(0, per_outlet, batch):
                now = service.now()
                with service.store.write() as tx:
                    for n in range(start, min(per_outlet, start + batch)):
                        request = InvoiceRequest.model_validate({
                            "request_id": f"{outlet_id}-{n}", "type": "FV", "invoice_number": f"F-{n}",
                            "pos_terminal_id": "POS-01", "operator": {"id": "1", "name": "JAN"},
                            "items": [{"name": "EAU", "type": "BIE", "tax_group": "B",
                                       "unit_price": f"{100 + n % 50}.00", "quantity": "2"}],
                            "payments": [{"method": "E", "amount": f"{2 * (100 + n % 50)}.00"}]})
                        lines, totals = signer.compute_totals(request, outlet, now)
                        invoice, _ = signer.seal(tx, service.issuer, outlet, request, isf=outlet["isf"],
                                                 invoice_id=f"{outlet_id}-INV-{n:06d}", lines=lines,
                                                 totals=totals, now=now)
                        ids.append(invoice["id"])
            out[outlet_id] = ids
    finally:
        service.close()
    return out


def set_tokens(cloud_data: Path, sim: EmcfSim, outlets: dict[str, list[str]], nif: str = "A1234567B") -> None:
    """Each outlet's e-MCF token in the cloud's token file (what `stalela cloud dgi token` writes)."""
    from cloud_stub.config import CloudConfig
    from cloud_stub.forwarder import save_token
    path = CloudConfig(data_dir=cloud_data).dgi_tokens_path
    for outlet_id in outlets:
        save_token(path, outlet_id, sim.token(nif, "ISF-" + outlet_id.split("-")[1]))


def dgi_status(cloud: CloudProcess) -> list[dict]:
    """Every outlet's forwarding status, through the cloud's API (the admin token)."""
    admin = cloud.admin_token()
    outlets = cloud.get("/v1/admin/outlets", admin)["outlets"]
    return [cloud.get(f"/v1/outlets/{o['id']}/dgi?limit=1000", admin) for o in outlets]


def wait_forwarded(cloud: CloudProcess, total: int, timeout: float = 300, settled: tuple[str, ...] = (
        "normalized", "device_reported", "quarantined")) -> list[dict]:
    """Until every ledger entry reached a settled state (or the timeout: the status is returned)."""
    deadline = time.monotonic() + timeout
    while True:
        rows = dgi_status(cloud)
        done = sum(r["counts"].get(s, 0) for r in rows for s in settled)
        if done >= total or time.monotonic() > deadline:
            return rows
        time.sleep(0.5)


def start_cloud(data_dir: Path, sim: EmcfSim, *extra: str) -> CloudProcess:
    cloud = CloudProcess(data_dir)
    cloud.start(30, "--workers", "0", "--dgi-url", sim.url, "--dgi-poll", "0.2", "--dgi-lease", "3s", *extra)
    return cloud


def check_exactly_once_in_order(sim: EmcfSim, outlets: dict[str, list[str]], expect: dict[str, list[str]] | None = None
                                ) -> dict[str, Any]:
    """Each invoice normalized once, and each outlet's in ledger order."""
    confirmed = sim.confirmed()
    rns = [c["rn"] for c in confirmed]
    assert len(rns) == len(set(rns)), "an invoice was normalized twice"
    wanted = expect or outlets
    for outlet_id, ids in wanted.items():
        isf = "ISF-" + outlet_id.split("-")[1]
        seen = [c["rn"] for c in confirmed if c["isf"] == isf]
        assert seen == ids, f"{outlet_id}: {len(seen)} normalized, order or set differs from the ledger's"
    return {"confirmed": confirmed}
