"""Test support: build an enrolled agent data folder and run the real daemon as a subprocess."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from agent.api.keys import create_key
from agent.config import write_default_config, write_secret
from fiscal.credential import DelegatedCredential
from fiscal.signing import generate_private_key, key_id, public_key_text, save_private_key
from agent.identity import OutletIdentity
from agent.store.db import connect, migrate

ROOT = Path(__file__).resolve().parent.parent


def python_path() -> str:
    """PYTHONPATH for a process a test starts: this checkout, then what is set now (a pinned
    clock's folder: tests/conftest.py `_pin`)."""
    return os.pathsep.join([str(ROOT), *(p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p)])


OUTLET = "KIN-001"
NIF = "A1234567B"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def invoice(request_id: str, n_items: int = 2, **overrides: Any) -> dict[str, Any]:
    items = [{"name": f"ART {i}", "type": "BIE", "tax_group": "B" if i % 2 else "A",
              "unit_price": f"{100 + i}.50", "quantity": "2"} for i in range(n_items)]
    body = {"request_id": request_id, "type": "FV", "price_mode": "TTC", "invoice_number": f"F/{request_id}",
            "pos_terminal_id": "POS-01", "operator": {"id": "1123", "name": "Jan"}, "items": items,
            "payments": []}
    body.update(overrides)
    return body


class _Process:
    """A service run as a real subprocess (`self.proc`, its log in `self.log`)."""

    proc: subprocess.Popen | None = None

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc:
            self.log.close()
        self.proc = None


class AgentHarness(_Process):
    """An enrolled agent data folder (test issuer) and, on demand, the daemon as a subprocess."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.issuer = generate_private_key()
        self.issuer_pub = public_key_text(self.issuer)
        self.proc: subprocess.Popen | None = None
        self._cred_seq = 0
        self._config = dict(agent__port=self.port, cloud__url=f"http://127.0.0.1:{free_port()}",
                            credential__check_interval=3600, signer__policy=["delegated"])
        write_default_config(data_dir, **self._config)
        migrate(data_dir / "agent.db")
        self.agent_key = generate_private_key()
        save_private_key(self.agent_key, data_dir / "keys" / "agent.key")
        write_secret(data_dir / "keys" / "cloud.token", "test-token-not-used")
        OutletIdentity(outlet_id=OUTLET, outlet_name="TEST OUTLET", merchant_nif=NIF, merchant_name="TEST SARL",
                       time_zone="Africa/Kinshasa", isf="STL-KIN-001", agent_id="agent-1",
                       issuer_public_key=self.issuer_pub, taxpayer={}).save(data_dir / "enrollment.json")
        conn = connect(data_dir / "agent.db")
        self.api_key = create_key(conn, "POS-01")
        conn.close()

    def configure(self, **overrides: object) -> None:
        """Rewrite config.toml with these `section__key` overrides (takes effect at the next start)."""
        self._config.update(overrides)
        write_default_config(self.data_dir, **self._config)

    # -------------------------------------------------------------- credentials
    def credential(self, start: int, end: int, *, valid_for: timedelta = timedelta(hours=12),
                   not_before: datetime | None = None) -> DelegatedCredential:
        self._cred_seq += 1
        nb = not_before or datetime.now(timezone.utc) - timedelta(minutes=1)
        return DelegatedCredential.issue(
            self.issuer, key_id(self.issuer_pub), id=f"DC-{OUTLET}-{self._cred_seq}", outlet_id=OUTLET,
            merchant_nif=NIF, agent_public_key=public_key_text(self.agent_key), block_start=start,
            block_end=end, not_before=nb, not_after=nb + valid_for)

    def add_credential(self, cred: DelegatedCredential) -> None:
        conn = connect(self.data_dir / "agent.db")
        conn.execute(
            "INSERT INTO credentials(id, body, block_start, block_end, next_number, not_before, not_after,"
            " state, received_at) VALUES (?, ?, ?, ?, ?, ?, ?, 'ready', ?)",
            (cred.id, cred.model_dump_json(), cred.block_start, cred.block_end, cred.block_start,
             cred.not_before.isoformat(), cred.not_after.isoformat(), datetime.now(timezone.utc).isoformat()))
        conn.close()

    # -------------------------------------------------------------- process
    def start(self, timeout: float = 20) -> None:
        env = dict(os.environ, PYTHONPATH=python_path())
        self.log = open(self.data_dir / "agent.log", "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "agent", "agent", "run", "--data", str(self.data_dir)],
                                     stdout=self.log, stderr=self.log, env=env, cwd=ROOT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"agent exited with {self.proc.returncode}: {self.read_log()[-2000:]}")
            try:
                self.get("/v1/health")
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("agent did not become ready")

    def read_log(self) -> str:
        return (self.data_dir / "agent.log").read_text(errors="replace")


    # -------------------------------------------------------------- HTTP
    def request(self, method: str, path: str, body: Any = None, *, key: str | None = "default",
                raw: bytes | None = None, headers: dict | None = None) -> tuple[int, Any, dict]:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        if key is not None:
            req.add_header("Authorization", f"Bearer {self.api_key if key == 'default' else key}")
        for k, v in (headers or {}).items():
            req.add_header(k, v)
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                payload = resp.read()
                return resp.status, _decode(payload, resp.headers), dict(resp.headers)
        except urllib.error.HTTPError as exc:
            payload = exc.read()
            return exc.code, _decode(payload, exc.headers), dict(exc.headers)

    def get(self, path: str, **kw):
        return self.request("GET", path, **kw)

    def post(self, path: str, body: Any = None, **kw):
        return self.request("POST", path, body, **kw)

    # -------------------------------------------------------------- journal
    def db(self):
        return connect(self.data_dir / "agent.db")

    def numbers(self) -> list[int]:
        conn = self.db()
        try:
            return [r[0] for r in conn.execute(
                "SELECT fiscal_number FROM invoices WHERE status='sealed' ORDER BY fiscal_number")]
        finally:
            conn.close()

    def verify(self) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "agent", "verify", "--data", str(self.data_dir)],
                              capture_output=True, text=True, cwd=ROOT, env=dict(os.environ, PYTHONPATH=python_path()))


def _decode(payload: bytes, headers) -> Any:
    ctype = headers.get("Content-Type", "")
    if "json" in ctype:
        return json.loads(payload)
    return payload


class CloudProcess(_Process):
    """The bundled cloud as a real `stalela cloud serve` subprocess on a SQLite file."""

    def __init__(self, data_dir: Path, port: int | None = None) -> None:
        self.data_dir = data_dir
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def cli(self, *args: str) -> str:
        res = subprocess.run([sys.executable, "-m", "agent", "cloud", *args, "--data", str(self.data_dir)],
                             capture_output=True, text=True, cwd=ROOT, env=dict(os.environ, PYTHONPATH=python_path()))
        if res.returncode != 0:
            raise RuntimeError(f"stalela cloud {' '.join(args)}: {res.stderr or res.stdout}")
        return res.stdout

    def start(self, timeout: float = 20, *extra: str) -> None:
        self.log = open(self.data_dir.parent / f"{self.data_dir.name}.log", "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "agent", "cloud", "serve", "--data", str(self.data_dir), "--port", str(self.port),
             *extra],
            stdout=self.log, stderr=self.log, cwd=ROOT, env=dict(os.environ, PYTHONPATH=python_path()))
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


    def admin_token(self) -> str:
        return (self.data_dir / "admin.token").read_text().strip()

    def get(self, path: str, token: str) -> Any:
        req = urllib.request.Request(self.url + path, headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.loads(resp.read())

    def add_outlet(self, outlet: str = OUTLET, nif: str = NIF) -> str:
        """Create merchant and outlet; returns a one-time enrollment token."""
        try:
            self.cli("merchant", "add", "--nif", nif, "--name", f"MERCHANT {nif}")
        except RuntimeError as exc:
            if "exists" not in str(exc):
                raise
        self.cli("outlet", "add", "--merchant", nif, "--id", outlet, "--name", f"OUTLET {outlet}")
        return self.cli("token", "create", "--outlet", outlet).split()[0]


class EnrolledAgent(AgentHarness):
    """An agent enrolled for real with a running CloudProcess (its credentials come from the cloud)."""

    def __init__(self, data_dir: Path, cloud: CloudProcess, token: str, *, block_size: int = 500,
                 sync_interval: float = 0.5, check_interval: float = 1, policy=("delegated",),
                 cloud_url: str | None = None, breaker_seconds: float = 30.0) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = None
        self.cloud = cloud
        write_default_config(data_dir, agent__port=self.port, cloud__url=cloud.url,
                             credential__block_size=block_size, sync__interval=sync_interval,
                             credential__check_interval=check_interval,
                             credential__renew_below_numbers=block_size // 2,
                             signer__policy=list(policy), signer__breaker_seconds=breaker_seconds)
        res = subprocess.run([sys.executable, "-m", "agent", "agent", "enroll", "--data", str(data_dir),
                              "--token", token], capture_output=True, text=True, cwd=ROOT,
                             env=dict(os.environ, PYTHONPATH=python_path()))
        if res.returncode != 0:
            raise RuntimeError(res.stderr or res.stdout)
        conn = connect(data_dir / "agent.db")
        self.api_key = create_key(conn, "POS-01")
        conn.close()
        self.cloud_token = (data_dir / "keys" / "cloud.token").read_text().strip()
        if cloud_url:  # talk to the cloud through something else (e.g. a fault proxy) from now on
            text = (data_dir / "config.toml").read_text().replace(f'url = "{cloud.url}"', f'url = "{cloud_url}"')
            (data_dir / "config.toml").write_text(text)
        ident = json.loads((data_dir / "enrollment.json").read_text())
        self.issuer_pub = ident["issuer_public_key"]
        self.outlet = ident["outlet_id"]

    def sync_state_counts(self) -> dict[str, int]:
        conn = self.db()
        try:
            return dict(conn.execute("SELECT sync_state, count(*) FROM invoices GROUP BY sync_state").fetchall())
        finally:
            conn.close()

    def wait_synced(self, timeout: float = 60) -> dict[str, int]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            counts = self.sync_state_counts()
            if not counts.get("pending"):
                return counts
            time.sleep(0.2)
        raise AssertionError(f"outbox not drained: {self.sync_state_counts()}")
