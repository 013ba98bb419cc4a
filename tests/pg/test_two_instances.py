"""Two `stalela cloud serve` processes on one PostgreSQL database, with light simulated agents.

Each outlet's agent (an enrolled key, real HTTP) reserves blocks, seals delegated invoices and
uploads them, while a second thread of the same outlet seals online: every request goes to one
instance or the other, so the same outlet's counter, chains and ledger are written by both at
once. Halfway through, one instance is SIGKILLed; the agents retry on the other (the same request
ids, the same batches). Afterwards: no number used twice, no ledger entry lost or duplicated, no
gap flagged, every chain verifies.
The issue's size: 200 outlets (≈ 12 s here, 2 shared cores); STALELA_TEST_OUTLETS sets another.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from datetime import timedelta
from http.client import HTTPException

import pytest

from fiscal.credential import DelegatedCredential
from cloud_stub.config import CloudConfig
from cloud_stub.service import CloudService

from tests.cloud.cloud_helpers import Agent, invoice_request, new_key
from tests.pg.server import scratch_database
from tests.support import ROOT, free_port, python_path

OUTLETS = int(os.environ.get("STALELA_TEST_OUTLETS", "200"))
ROUNDS = 4  # blocks per outlet
BLOCK = 5
ONLINE = 8  # online seals per outlet


@pytest.fixture
def database():
    with scratch_database() as url:
        yield url


class Instance:
    def __init__(self, data_dir, database_url: str, log_path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cloud_stub", "serve", "--data", str(data_dir), "--port", str(self.port),
             "--workers", "0", "--database-url", database_url],
            stdout=self.log, stderr=self.log, cwd=ROOT, env=dict(os.environ, PYTHONPATH=python_path()))

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"cloud exited with {self.proc.returncode}")
            try:
                with urllib.request.urlopen(self.url + "/v1/health", timeout=1):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("cloud did not become ready")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


class Unreachable(Exception):
    pass


def request(base: str, method: str, path: str, token: str, body=None) -> tuple[int, dict]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, method=method,
                                 headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")
    except (OSError, HTTPException) as exc:  # refused, reset, or cut mid-answer: the instance died
        raise Unreachable(str(exc)) from None


class Cluster:
    """The instances the agents use; a dead one is skipped from then on."""

    def __init__(self, instances: list[Instance]):
        self.instances = instances
        self.done = 0
        self.retried = 0  # requests the killed instance never answered, sent again to the other
        self._lock = threading.Lock()

    def call(self, turn: int, method: str, path: str, token: str, body=None) -> tuple[int, dict]:
        for attempt in range(len(self.instances) * 2):
            instance = self.instances[(turn + attempt) % len(self.instances)]
            if instance.proc.poll() is not None:
                continue
            try:
                answer = request(instance.url, method, path, token, body)
            except Unreachable:
                with self._lock:
                    self.retried += 1
                continue  # the same request, with its id, to the other instance
            with self._lock:
                self.done += 1
            return answer
        raise AssertionError(f"no instance answered {method} {path}")


def delegated_work(cluster: Cluster, agent: Agent, sealed: list[int]) -> None:
    for r in range(ROUNDS):
        status, doc = cluster.call(r, "POST", "/v1/credentials", agent.token,
                                   {"block_size": BLOCK, "request_id": f"{agent.id}-block-{r}"})
        assert status in (200, 201), doc
        cred = DelegatedCredential.model_validate(doc)
        invoices = [agent.seal(cred, n) for n in range(cred.block_start, cred.block_end + 1)]
        status, answer = cluster.call(r + 1, "POST", "/v1/reconcile", agent.token, {"invoices": invoices})
        assert status == 200, answer
        # A batch retried after a kill may come back as duplicates of what the dead instance committed.
        assert {res["status"] for res in answer["results"]} <= {"accepted", "duplicate"}, answer
        sealed.extend(inv["security"]["fiscal_number"] for inv in invoices)


def online_work(cluster: Cluster, agent: Agent, sealed: list[int]) -> None:
    for i in range(ONLINE):
        status, invoice = cluster.call(i, "POST", "/v1/seal", agent.token,
                                       {"invoice": invoice_request(request_id=f"{agent.id}-online-{i}")
                                        .model_dump(mode="json")})
        assert status in (200, 201), invoice
        sealed.append(invoice["security"]["fiscal_number"])


def test_two_instances_share_one_database(tmp_path, database):
    data = tmp_path / "cloud"
    setup = CloudService(CloudConfig(data_dir=data, database_url=database, verify_workers=0, audit_interval=0,
                                     gap_grace=timedelta(0)))
    try:  # the schema, the issuer key and the admin token, before either instance starts
        setup.add_merchant("A1234567B", "MERCHANT")
        tokens = {}
        for n in range(OUTLETS):
            setup.add_outlet(f"KIN-{n:02d}", "A1234567B", f"OUTLET {n}", isf="ISF-1")
            tokens[f"KIN-{n:02d}"] = setup.create_token(f"KIN-{n:02d}")["token"]
        admin = setup.admin_token
    finally:
        setup.close()
    instances = [Instance(data, database, tmp_path / f"cloud-{i}.log") for i in range(2)]
    try:
        for instance in instances:
            instance.wait_ready()
        cluster = Cluster(instances)
        agents = []
        for i, (outlet_id, token) in enumerate(sorted(tokens.items())):
            key, public = new_key()
            status, enrolled = cluster.call(i, "POST", "/v1/enroll", "",
                                            {"token": token, "agent_public_key": public, "label": "sim"})
            assert status == 201, enrolled
            agents.append(Agent(enrolled["agent_id"], enrolled["agent_token"], enrolled["outlet"], key))

        delegated = {a.outlet["id"]: [] for a in agents}
        online = {a.outlet["id"]: [] for a in agents}
        errors: list[BaseException] = []

        def guarded(fn, *args):
            try:
                fn(*args)
            except BaseException as exc:  # reported below, with the thread's own assertion
                errors.append(exc)

        threads = [threading.Thread(target=guarded, args=(delegated_work, cluster, a, delegated[a.outlet["id"]]))
                   for a in agents]
        threads += [threading.Thread(target=guarded, args=(online_work, cluster, a, online[a.outlet["id"]]))
                    for a in agents]
        for t in threads:
            t.start()
        total = OUTLETS * (2 * ROUNDS + ONLINE)
        while cluster.done < total // 2 and any(t.is_alive() for t in threads):
            time.sleep(0.01)
        instances[1].proc.send_signal(signal.SIGKILL)  # mid-batch for some agent, most likely
        for t in threads:
            t.join(timeout=120)
        assert not errors, errors
        assert instances[1].proc.wait() == -signal.SIGKILL
        print(f"requests answered: {cluster.done}, sent again after the kill: {cluster.retried}")

        survivor = instances[0].url
        status, audit = request(survivor, "POST", "/v1/admin/audit", admin)
        assert status == 200 and audit["new_flags"] == [], audit
        for outlet_id in sorted(tokens):
            status, page = request(survivor, "GET", f"/v1/outlets/{outlet_id}/ledger?limit=1000", admin)
            entries = page["entries"]
            numbers = [e["fiscal_number"] for e in entries]
            assert len(numbers) == len(set(numbers)), f"{outlet_id}: a number used twice"
            # Nothing lost, nothing duplicated: exactly what the agents sealed.
            assert sorted(numbers) == sorted(delegated[outlet_id] + online[outlet_id])
            assert sorted(e["fiscal_number"] for e in entries if e["mode"] == "cloud") == sorted(online[outlet_id])
            assert [e["seq"] for e in entries] == list(range(1, len(entries) + 1))
            status, verdict = request(survivor, "GET", f"/v1/outlets/{outlet_id}/ledger/verify", admin)
            assert verdict["valid"], verdict
            status, flags = request(survivor, "GET", f"/v1/outlets/{outlet_id}/flags", admin)
            assert flags["flags"] == [], flags
    finally:
        for instance in instances:
            instance.stop()
