"""The cloud on PostgreSQL (issue 11): each figure beside a limit measured in the same run.

    python -m bench.pgcloud --quick                  # a smoke run: small counts, ≈ 2 minutes
    python -m bench.pgcloud                          # the full figures (a 10,000,000-entry ledger)
    ./dev bench --cloud-db postgresql                # the same, written into docs/benchmarks.md
    python -m bench.pgcloud --only seal [--outlets 200 --per-outlet 20 --backend sqlite]
                                                     # the online seal alone, as JSON (≈ 1 minute)

Every step runs real `stalela cloud serve` processes on a database of its own, created on the
server for the step (`bench_<run>_<step>`) and dropped afterwards, also when the step fails or
the run is interrupted (Ctrl-C, SIGTERM). The server is $STALELA_BENCH_PG_URL or `--admin-url`
(a URL with the right to create databases), by default postgres on 127.0.0.1:5432.

The figures:
- reconciliation, the cloud alone, batches of 1,000: bench/sync.py's `reconcile_throughput`;
- backlog drain from one agent: bench/sync.py's `backlog_drain` (the agent's own SyncWorker);
- online cloud seal: N enrolled outlets, one keep-alive connection each, in a closed loop
  (bench/loadgen.py), every request built before the clock starts with its outlet's token;
- reconcile p99 with a large ledger ÷ with an empty one: two clouds side by side, one on an empty
  database and one on a database whose ledger was filled by SQL (bench/dashboard.py's rows, plus
  their `invoice_codes`), each reconciling the backlog of a fresh outlet, in alternating rounds;
- two instances ÷ one: two `cloud serve` processes on one database; light agents (an enrolled
  key, invoices sealed in this process before the clock starts) post their batches in
  alternating rounds to one instance, then to both (each outlet's batches alternate between the
  instances, so the same outlet's chain is continued by both).
"""
from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import secrets
import signal
import statistics
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator
from zoneinfo import ZoneInfo

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fiscal.credential import DelegatedCredential  # noqa: E402
from fiscal.models import InvoiceRequest  # noqa: E402
from fiscal.protocol import GENESIS_HASH  # noqa: E402
from fiscal.seal import apply_signature  # noqa: E402
from fiscal.signing import generate_private_key, public_key_text  # noqa: E402
from fiscal.tax import compute  # noqa: E402
from tests.support import CloudProcess  # noqa: E402

from . import limits  # noqa: E402
from .loadgen import LoadError, build_request, closed_loop  # noqa: E402
from .workload import ten_item_invoice  # noqa: E402

CORES = os.cpu_count() or 1
DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
ADMIN_URL_ENV = "STALELA_BENCH_PG_URL"
DATABASE_URL_ENV = "STALELA_CLOUD_DATABASE_URL"  # what `stalela cloud …` reads (cloud_stub/config.py)
LEDGER = 10_000_000
NIF = "A1234567B"

Progress = Callable[[str], None]


def _stderr(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# -- databases ----------------------------------------------------------------------------------

def _with_database(url: str, name: str) -> str:
    head, _, tail = url.rpartition("/")
    query = tail.partition("?")[2]
    return f"{head}/{name}" + (f"?{query}" if query else "")


class Databases:
    """The run's databases on one server: `bench_<run>_<step>`, each dropped when its step ends."""

    def __init__(self, admin_url: str) -> None:
        self.admin_url = admin_url
        self.run = secrets.token_hex(4)

    @contextmanager
    def scratch(self, step: str) -> Iterator[str]:
        import psycopg

        name = f"bench_{self.run}_{step}"
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        try:
            yield _with_database(self.admin_url, name)
        finally:
            # FORCE: a cloud process that did not stop in time must not keep the database alive.
            with psycopg.connect(self.admin_url, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def admin_url(given: str | None = None) -> str:
    return given or os.environ.get(ADMIN_URL_ENV) or DEFAULT_ADMIN_URL


def server_problem(url: str) -> str | None:
    """Why the benchmark cannot use this server (None: it can), in one line, before any long step."""
    import psycopg

    try:
        with psycopg.connect(url, connect_timeout=5, autocommit=True) as conn:
            if not conn.execute("SELECT rolcreatedb OR rolsuper FROM pg_roles WHERE rolname = current_user"
                                ).fetchone()[0]:
                return f"{_redacted(url)}: this user may not create databases"
    except psycopg.Error as exc:
        lines = str(exc).strip().splitlines()
        return f"PostgreSQL at {_redacted(url)} does not answer: {lines[0] if lines else type(exc).__name__}"
    return None


def _redacted(url: str) -> str:
    """The URL without a password (it may be given one; it is never printed)."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


@contextmanager
def _cloud_database(url: str) -> Iterator[None]:
    """`stalela cloud serve` and the admin commands started meanwhile use this database."""
    before = os.environ.get(DATABASE_URL_ENV)
    os.environ[DATABASE_URL_ENV] = url
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(DATABASE_URL_ENV, None)
        else:
            os.environ[DATABASE_URL_ENV] = before


@contextmanager
def _terminated_cleanly() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so that the `finally` blocks stop the clouds and drop the
    databases (a killed benchmark must not leave gigabytes behind on the server)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# -- the server's limits --------------------------------------------------------------------------

def pg_limits(url: str, seconds: float = 2.0, clients: int = 16) -> dict[str, float]:
    """What one PostgreSQL server on this machine can do at most, in the units the cloud spends.

    - durable single-row INSERT + COMMIT, one connection (each COMMIT waits for its WAL flush);
    - the same from `clients` connections at once (the server's group commit shares flushes);
    - a `SELECT 1` round trip (the floor of any query the cloud makes).
    The server's `fsync` and `synchronous_commit` are returned too: with either off, the commit
    rates are not a disk's limit.
    """
    import psycopg

    body = "x" * 2500  # about a 10-item sealed invoice's text
    with psycopg.connect(url, autocommit=True) as conn:
        settings = {name: conn.execute(f"SHOW {name}").fetchone()[0] for name in ("fsync", "synchronous_commit")}
        conn.execute("CREATE TABLE bench_limit (id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, body TEXT)")
        try:
            n, end = 0, time.perf_counter() + seconds
            start = time.perf_counter()
            while time.perf_counter() < end:
                conn.execute("INSERT INTO bench_limit (body) VALUES (%s)", (body,))  # autocommit: its own COMMIT
                n += 1
            single = n / (time.perf_counter() - start)

            counts = [0] * clients
            stop_at = time.perf_counter() + seconds

            def writer(k: int) -> None:
                with psycopg.connect(url, autocommit=True) as own:
                    while time.perf_counter() < stop_at:
                        own.execute("INSERT INTO bench_limit (body) VALUES (%s)", (body,))
                        counts[k] += 1
            threads = [threading.Thread(target=writer, args=(k,)) for k in range(clients)]
            start = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            concurrent = sum(counts) / (time.perf_counter() - start)

            lat = []
            for _ in range(2000):
                t = time.perf_counter()
                conn.execute("SELECT 1").fetchone()
                lat.append(time.perf_counter() - t)
        finally:
            conn.execute("DROP TABLE IF EXISTS bench_limit")
    return {"pg_commit_rate": single, "pg_commit_rate_n": concurrent, "pg_clients": clients,
            "pg_select1_ms": statistics.median(lat) * 1000, "pg_fsync": settings["fsync"],
            "pg_synchronous_commit": settings["synchronous_commit"]}


def measure_limits(url: str) -> dict[str, float]:
    return {**pg_limits(url), "verify_checked_rate": limits.checked_verification_rate(),
            "sign_rate": limits.signature_rate(), "http_empty_ms": limits.empty_http_roundtrip() * 1000}


# -- HTTP helpers ---------------------------------------------------------------------------------

class Admin:
    """The admin API of a running cloud, over one keep-alive connection."""

    def __init__(self, cloud: CloudProcess) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", cloud.port, timeout=120)
        self.token = cloud.admin_token()

    def call(self, method: str, path: str, body: dict, token: str | None = None, expect=(200, 201)) -> dict:
        self.conn.request(method, path, body=json.dumps(body).encode(),
                          headers={"Content-Type": "application/json",
                                   "Authorization": f"Bearer {token if token is not None else self.token}"})
        resp = self.conn.getresponse()
        data = resp.read()
        if resp.status not in expect:
            raise RuntimeError(f"{method} {path}: HTTP {resp.status}: {data[:300]!r}")
        return json.loads(data)

    def close(self) -> None:
        self.conn.close()


class LightAgent:
    """An enrolled outlet as the benchmark drives it: its key, token and outlet, and the chain of
    the delegated invoices it sealed (what a full agent keeps in its journal)."""

    def __init__(self, outlet: dict, token: str, key) -> None:
        self.outlet, self.token, self.key = outlet, token, key
        self.prev_hash = GENESIS_HASH
        self.credential: DelegatedCredential | None = None
        self.number = 0
        self._computed: tuple | None = None

    def seal(self, request_id: str) -> dict:
        """The next delegated 10-item invoice of the credential, sealed with the agent's key."""
        cred = self.credential
        self.number = self.number + 1 if self.number else cred.block_start
        if self.number > cred.block_end:
            raise RuntimeError("the credential's block is used up")
        moment = datetime.now(timezone.utc).astimezone(ZoneInfo(self.outlet["time_zone"])).replace(microsecond=0)
        request = ten_item_invoice(request_id)
        if self._computed is None or self._computed[0] != moment.date():
            # The same items every time: their lines and totals are computed once per day.
            result = compute(InvoiceRequest.model_validate(request), moment.date())
            self._computed = (moment.date(), [line.model_dump(mode="json") for line in result.lines],
                              result.totals.model_dump(mode="json"))
        valid = InvoiceRequest.model_validate(request).model_dump(mode="json", exclude={"payments"})
        invoice = {"id": f"INV-{self.outlet['id']}-{self.number}", **valid, "status": "sealed", "mode": "delegated",
                   "merchant_nif": self.outlet["merchant_nif"], "outlet_id": self.outlet["id"],
                   "isf": self.outlet["isf"], "lines": self._computed[1], "totals": self._computed[2],
                   "security": {"authority_id": cred.id,
                                "counters": {"type": self.number, "total": self.number,
                                             "label": f"{self.number}/{self.number} FV"},
                                "fiscal_number": self.number, "timestamp": moment.isoformat()},
                   "chain": {"prev_hash": self.prev_hash}}
        apply_signature(invoice, self.key, cred)
        self.prev_hash = invoice["chain"]["hash"]
        return invoice


def enroll_outlets(cloud: CloudProcess, count: int, prefix: str) -> list[LightAgent]:
    """`count` outlets created and enrolled through the admin API, each with a key of its own."""
    admin = Admin(cloud)
    try:
        admin.call("POST", "/v1/admin/merchants", {"nif": NIF, "name": "BENCH SARL",
                                                   "taxpayer": {"address": "BOULEVARD 30 JUIN"}}, expect=(201, 409))
        agents = []
        for n in range(count):
            outlet_id = f"{prefix}-{n:04d}"
            admin.call("POST", "/v1/admin/outlets", {"id": outlet_id, "merchant_nif": NIF, "name": outlet_id,
                                                     "time_zone": "Africa/Kinshasa", "isf": f"ISF-{n:04d}"})
            token = admin.call("POST", f"/v1/admin/outlets/{outlet_id}/tokens", {})["token"]
            key = generate_private_key()
            enrolled = admin.call("POST", "/v1/enroll", {"token": token, "agent_public_key": public_key_text(key),
                                                         "label": "bench"}, token="")
            agents.append(LightAgent(enrolled["outlet"], enrolled["agent_token"], key))
        return agents
    finally:
        admin.close()


async def _post_batches(plan: list[list[tuple[int, bytes, int]]]) -> tuple[float, list[float]]:
    """One client per outlet posting its batches in order, each to the port it names (keep-alive
    connections, one per instance): (seconds, latencies). Every invoice must be accepted."""
    latencies: list[float] = []

    async def client(items: list[tuple[int, bytes, int]]) -> None:
        conns: dict[int, tuple[asyncio.StreamReader, asyncio.StreamWriter]] = {}
        try:
            for port, request, expected in items:
                if port not in conns:
                    conns[port] = await asyncio.open_connection("127.0.0.1", port)
                reader, writer = conns[port]
                sent = time.perf_counter()
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                body = await reader.readexactly(length)
                latencies.append(time.perf_counter() - sent)
                status = int(head[9:12])
                if status != 200:
                    raise LoadError(f"reconcile answered {status}: {body[:300]!r}")
                answer = json.loads(body)
                if answer["accepted"] != expected:
                    bad = next((r for r in answer["results"] if r["status"] != "accepted"), answer)
                    raise LoadError(f"{answer['accepted']} of {expected} accepted: {bad}")
        finally:
            for _, writer in conns.values():
                writer.close()

    start = time.perf_counter()
    await asyncio.gather(*(client(items) for items in plan))
    return time.perf_counter() - start, latencies


def _reconcile_request(port: int, token: str, invoices: list[dict]) -> bytes:
    body = json.dumps({"invoices": invoices}, separators=(",", ":")).encode()
    return build_request("/v1/reconcile", f"127.0.0.1:{port}", body, {"Authorization": f"Bearer {token}"})


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


# -- the figures ----------------------------------------------------------------------------------

def _postgres_cpu() -> float:
    """CPU seconds of every PostgreSQL server process on this machine (its backends, WAL writer,
    checkpointer…): /proc, whoever owns them. Other clients' work on the same server counts too."""
    from .sync import _cpu_seconds

    total = 0.0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/comm") as f:
                    if f.read().strip() != "postgres":
                        continue
            except OSError:
                continue
            total += _cpu_seconds(int(entry))
    return total


def online_seal(workdir: Path, url: str | None, outlets: int, per_outlet: int, progress: Progress,
                extra: tuple[str, ...] = (), rate: float | None = None) -> dict[str, float]:
    """`outlets` enrolled outlets sealing online at once, one connection each, closed loop.

    `url` None: the cloud on its SQLite file. The CPU per seal is the cloud process's (/proc),
    and on PostgreSQL the server processes' (every `postgres` process on the machine)."""
    from .sync import _cpu_seconds

    data = workdir / "seal" / "cloud"
    data.parent.mkdir(parents=True)
    cloud = CloudProcess(data)
    with _cloud_database(url) if url else _no_cloud_database():
        cloud.start(60, "--workers", "0", *extra)  # online sealing verifies nothing: no verifier processes
    try:
        progress(f"  enrolling {outlets} outlets…")
        agents = enroll_outlets(cloud, outlets, "SEAL")
        host = f"127.0.0.1:{cloud.port}"

        def plan(tag: str, count: int) -> list[list[bytes]]:
            return [[build_request("/v1/seal", host,
                                   json.dumps({"invoice": ten_item_invoice(f"{tag}-{k}-{i}")}).encode(),
                                   {"Authorization": f"Bearer {a.token}"}) for i in range(count)]
                    for k, a in enumerate(agents)]
        warm, measured = plan("warm", 2), plan("seal", per_outlet)
        asyncio.run(closed_loop("127.0.0.1", cloud.port, warm, expect=201))
        progress(f"  {outlets} × {per_outlet} online seals…")
        cpu0, pg0 = _cpu_seconds(cloud.proc.pid), _postgres_cpu() if url else 0.0
        achieved, lat = asyncio.run(closed_loop("127.0.0.1", cloud.port, measured, expect=201, rate=rate))
        cloud_cpu, pg_cpu = _cpu_seconds(cloud.proc.pid) - cpu0, (_postgres_cpu() - pg0) if url else 0.0
    finally:
        cloud.stop()
    count = outlets * per_outlet
    return {"seal_outlets": outlets, "seal_count": count, "seal_rate": achieved, **({"seal_offered": rate} if rate else {}),
            "seal_p50_ms": pct(lat, 50) * 1000, "seal_p99_ms": pct(lat, 99) * 1000,
            "seal_cloud_cpu_us": cloud_cpu / count * 1e6, "seal_pg_cpu_us": pg_cpu / count * 1e6}


@contextmanager
def _no_cloud_database() -> Iterator[None]:
    """The cloud started meanwhile uses its SQLite file, whatever the environment says."""
    before = os.environ.pop(DATABASE_URL_ENV, None)
    try:
        yield
    finally:
        if before is not None:
            os.environ[DATABASE_URL_ENV] = before


def seal_only(admin: str, outlets: int, per_outlet: int, backend: str, extra: tuple[str, ...] = (),
              rate: float | None = None, progress: Progress = _stderr) -> dict[str, float]:
    """The online-seal step alone (`--only seal`), on a scratch database or on SQLite."""
    with _terminated_cleanly(), tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as folder:
        if backend == "sqlite":
            return online_seal(Path(folder), None, outlets, per_outlet, progress, extra, rate)
        with Databases(admin).scratch("seal") as url:
            return online_seal(Path(folder), url, outlets, per_outlet, progress, extra, rate)


def fill_ledger(url: str, entries: int, progress: Progress) -> dict[str, float]:
    """A ledger of `entries` rows in an empty database, by SQL: bench/dashboard.py's outlets and
    entries (interleaved across 1 outlet per 1,000 entries, at most 10,000 outlets, with their
    credentials, agents, counters, flags and devices), plus one `invoice_codes` row per entry as
    the cloud writes with each append; then VACUUM ANALYZE, as autovacuum would leave it."""
    import psycopg

    from .dashboard import _fill_pg, _plan

    outlets = min(10_000, max(10, entries // 1000))
    t = time.perf_counter()
    p = _plan(outlets, entries)
    _fill_pg(url, p, lambda n: progress(f"  {n:,} / {p['entries']:,} ledger entries"))
    with psycopg.connect(url, autocommit=True) as conn:
        step = 1_000_000
        for lo in range(0, p["entries"], step):
            hi = min(p["entries"], lo + step)
            # The code as the seal makes it: 24 characters of base32, one per entry.
            conn.execute(
                "INSERT INTO invoice_codes (outlet_id, merchant_nif, code, inv_type, total, reference_code) "
                "SELECT outlet_id, merchant_nif, upper(substr(md5(id::text || 'code'), 1, 24)), inv_type, "
                "(invoice::json #>> '{totals,total}'), NULL FROM ledger WHERE id > %s AND id <= %s ORDER BY id",
                (lo, hi))
            progress(f"  {hi:,} / {p['entries']:,} invoice codes")
        progress("  VACUUM ANALYZE…")
        conn.execute("VACUUM ANALYZE")
        conn.execute("CHECKPOINT")  # the fill's dirty pages written now, not during the measurement
        size = conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]
    return {"ledger_entries": p["entries"], "ledger_outlets": outlets, "fill_s": time.perf_counter() - t,
            "db_gb": size / 1e9}


def ledger_ratio(workdir: Path, empty_url: str, full_url: str, entries: int, count: int, batch: int,
                 progress: Progress) -> dict[str, float]:
    """Reconcile latency per batch of a fresh outlet, with `entries` in the ledger and with none.

    Both clouds run side by side (the same settings, each on its own database); each posts its
    outlet's backlog in batches of `batch`, the two taking turns in 4 rounds, so a burst of other
    work on the machine falls on both sides. The first batch of each side warms it and is not counted.
    """
    from .sync import _seal_backlog, _start_cloud, request_bodies

    built = fill_ledger(full_url, entries, progress)
    sides = {}
    clouds = []
    try:
        for side, url in (("empty", empty_url), ("full", full_url)):
            folder = workdir / f"ratio-{side}"
            folder.mkdir(parents=True)
            with _cloud_database(url):
                cloud = _start_cloud(folder, None)
                clouds.append(cloud)
                progress(f"  {side} ledger: sealing a backlog of {count} offline…")
                agent, _ = _seal_backlog(folder, cloud, count, outlet=f"FRESH-{side.upper()}")
            sides[side] = (cloud, agent, request_bodies(agent, count, batch))
        lat: dict[str, list[float]] = {"empty": [], "full": []}
        conns = {side: http.client.HTTPConnection("127.0.0.1", c.port, timeout=300)
                 for side, (c, _, _) in sides.items()}
        try:
            def post(side: str, body: bytes) -> float:
                cloud, agent, _ = sides[side]
                conn = conns[side]
                t = time.perf_counter()
                conn.request("POST", "/v1/reconcile", body=body, headers={
                    "Authorization": f"Bearer {agent.cloud_token}", "Content-Type": "application/json"})
                resp = conn.getresponse()
                data = resp.read()
                elapsed = time.perf_counter() - t
                answer = json.loads(data) if resp.status == 200 else None
                if answer is None or answer["rejected"] or answer["duplicate"]:
                    raise RuntimeError(f"{side}: reconcile answered {resp.status}: {data[:300]!r}")
                return elapsed

            for side in sides:
                post(side, sides[side][2][0])  # warm-up
            rest = {side: sides[side][2][1:] for side in sides}
            rounds = 4
            progress(f"  {len(rest['empty'])} batches of {batch} per side, in {rounds} rounds…")
            for r in range(rounds):
                for side in (("empty", "full") if r % 2 == 0 else ("full", "empty")):
                    chunk = rest[side]
                    share = len(chunk) // rounds
                    for body in chunk[r * share: len(chunk) if r == rounds - 1 else (r + 1) * share]:
                        lat[side].append(post(side, body))
        finally:
            for conn in conns.values():
                conn.close()
    finally:
        for cloud in clouds:
            cloud.stop()
    out = {"ratio_batch": batch, "ratio_count": count, **built}
    for side in ("empty", "full"):
        out[f"{side}_p50_ms"] = pct(lat[side], 50) * 1000
        out[f"{side}_p99_ms"] = pct(lat[side], 99) * 1000
    out["ratio_p99"] = out["full_p99_ms"] / out["empty_p99_ms"]
    return out


def two_instances(workdir: Path, url: str, outlets: int, rounds: int, per_round: int, batch: int,
                  progress: Progress) -> dict[str, float]:
    """Reconciliation from `outlets` light agents at once: one instance, then two on one database.

    Rounds alternate (one, two, one, two…): in each, every outlet posts `per_round` invoices in
    batches of `batch`, one after the other (its chain continues). With two instances, an outlet's
    batches alternate between them. Both instances run all along, with the default verifier
    processes (one per core each): what a deployment of two would run on this machine. A batch
    of 64 or more is what the verifier processes check (`parallel_min_batch`); a smaller one is
    checked in the service's own process, which would turn the ratio into one core against two.
    """
    data = workdir / "pair" / "cloud"
    data.parent.mkdir(parents=True)
    pair = [CloudProcess(data), CloudProcess(data)]
    try:
        with _cloud_database(url):
            for cloud in pair:  # one after the other: the first creates the schema, issuer key and admin token
                cloud.start(60)
        progress(f"  enrolling {outlets} outlets…")
        agents = enroll_outlets(pair[0], outlets, "PAIR")
        warm = 2 * batch  # one batch to each instance first: both warm, their verifier processes started
        total = warm + rounds * per_round
        admin = Admin(pair[0])
        try:
            for a in agents:
                a.credential = DelegatedCredential.model_validate(admin.call(
                    "POST", "/v1/credentials", {"block_size": total}, token=a.token))
        finally:
            admin.close()
        progress(f"  sealing {outlets} × {total} invoices in this process…")
        sealed = [[a.seal(f"R-{a.outlet['id']}-{i}") for i in range(total)] for a in agents]
        progress("  warm-up: one batch per outlet to each instance…")
        asyncio.run(_post_batches([[(cloud.port, _reconcile_request(cloud.port, a.token, part), len(part))
                                    for cloud, part in zip(pair, (sealed[k][:batch], sealed[k][batch:warm]))]
                                   for k, a in enumerate(agents)]))
        elapsed = {"one": 0.0, "two": 0.0}
        invoices = {"one": 0, "two": 0}
        for r in range(rounds):
            mode = "one" if r % 2 == 0 else "two"
            plan = []
            for k, a in enumerate(agents):
                mine = sealed[k][warm + r * per_round:warm + (r + 1) * per_round]
                items = []
                for j in range(0, len(mine), batch):
                    port = pair[0].port if mode == "one" else pair[(k + j // batch) % 2].port
                    part = mine[j:j + batch]
                    items.append((port, _reconcile_request(port, a.token, part), len(part)))
                plan.append(items)
            progress(f"  round {r + 1}/{rounds}: {mode} instance{'s' if mode == 'two' else ''}…")
            seconds, _ = asyncio.run(_post_batches(plan))
            elapsed[mode] += seconds
            invoices[mode] += outlets * per_round
    finally:
        for cloud in pair:
            cloud.stop()
    one, two = invoices["one"] / elapsed["one"], invoices["two"] / elapsed["two"]
    return {"pair_outlets": outlets, "pair_batch": batch, "pair_invoices": invoices["one"] + invoices["two"],
            "one_rate": one, "two_rate": two, "pair_ratio": two / one}


# -- the section ----------------------------------------------------------------------------------

def sizes(quick: bool, ledger: int | None) -> dict[str, int]:
    if quick:
        s = {"reconcile": 2000, "backlog": 2000, "seal_outlets": 20, "seal_per_outlet": 20, "ledger": 20_000,
             "ratio_count": 2000, "ratio_batch": 100, "pair_outlets": 20, "pair_rounds": 4, "pair_per_round": 100,
             "pair_batch": 100}
    else:
        s = {"reconcile": 20_000, "backlog": 100_000, "seal_outlets": 200, "seal_per_outlet": 50, "ledger": LEDGER,
             "ratio_count": 20_000, "ratio_batch": 100, "pair_outlets": 200, "pair_rounds": 4, "pair_per_round": 100,
             "pair_batch": 100}
    if ledger is not None:
        s["ledger"] = ledger
    return s


def run(quick: bool = False, ledger: int | None = None, admin_url: str = DEFAULT_ADMIN_URL,
        progress: Progress = _stderr) -> dict[str, float]:
    """Every figure of the section, each step on a database of its own (dropped afterwards)."""
    from .sync import backlog_drain, reconcile_throughput

    s = sizes(quick, ledger)
    dbs = Databases(admin_url)
    result: dict[str, float] = {"quick": quick}
    with _terminated_cleanly(), tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as folder:
        workdir = Path(folder)
        progress(f"PostgreSQL: limits (databases bench_{dbs.run}_*)…")
        with dbs.scratch("limits") as url:
            result.update(measure_limits(url))
        progress(f"PostgreSQL: cloud reconciliation, {s['reconcile']} invoices in batches of 1,000…")
        with dbs.scratch("reconcile") as url, _cloud_database(url):
            (workdir / "reconcile").mkdir()
            result.update(reconcile_throughput(workdir / "reconcile", s["reconcile"], batch=1000))
        progress(f"PostgreSQL: backlog drain of {s['backlog']} from one agent…")
        with dbs.scratch("drain") as url, _cloud_database(url):
            (workdir / "drain").mkdir()
            result.update(backlog_drain(workdir / "drain", s["backlog"]))
        progress(f"PostgreSQL: online seal, {s['seal_outlets']} outlets…")
        with dbs.scratch("seal") as url:
            result.update(online_seal(workdir, url, s["seal_outlets"], s["seal_per_outlet"], progress))
        progress(f"PostgreSQL: reconcile latency, {s['ledger']:,} ledger entries and none…")
        with dbs.scratch("empty") as empty_url, dbs.scratch("full") as full_url:
            result.update(ledger_ratio(workdir, empty_url, full_url, s["ledger"], s["ratio_count"],
                                       s["ratio_batch"], progress))
        progress(f"PostgreSQL: two instances ÷ one, {s['pair_outlets']} outlets…")
        with dbs.scratch("pair") as url:
            result.update(two_instances(workdir, url, s["pair_outlets"], s["pair_rounds"], s["pair_per_round"],
                                        s["pair_batch"], progress))
    return result


def render(r: dict) -> str:
    verify = r["verify_checked_rate"] * CORES
    commit_ms = 1000 / r["pg_commit_rate"]
    drain_100k = 100_000 / r["drain_rate"]
    rows = [
        (f"reconciliation, the cloud alone, batches of {r['batch']:,.0f} ({r['invoices']:,.0f} invoices)",
         f"{r['reconcile_rate']:.0f} invoices/s", "≥ 5,000/s",
         f"{r['reconcile_rate'] / verify:.2f} × Ed25519 verification on all {CORES} cores ({verify:.0f}/s)"),
        ("  CPU per invoice: cloud service / verification workers / PostgreSQL backend",
         f"{r['service_cpu_us']:.0f} / {r['workers_cpu_us']:.0f} / {r.get('database_cpu_us', 0):.0f} µs", "—",
         f"one verification = {1e6 / r['verify_checked_rate']:.0f} µs"),
        (f"backlog drain of {r['backlog']:,.0f} from one agent (agent sync + cloud, same {CORES} cores)",
         f"{r['drain_s']:.1f} s ({r['drain_rate']:.0f} invoices/s)", "≤ 60 s for 100,000",
         f"{drain_100k:.0f} s for 100,000 at this rate; {r['drain_rate'] / verify:.2f} × Ed25519 verification "
         f"on all cores"),
        (f"online cloud seal, {r['seal_outlets']:.0f} concurrent outlets ({r['seal_count']:,.0f} seals)",
         f"{r['seal_rate']:.0f} /s, p50 / p99 {r['seal_p50_ms']:.1f} / {r['seal_p99_ms']:.1f} ms",
         "≥ 2,000/s, p99 ≤ 20 ms",
         f"{r['seal_rate'] / r['pg_commit_rate_n']:.2f} × durable commits from {r['pg_clients']:.0f} connections "
         f"({r['pg_commit_rate_n']:.0f}/s); {r['seal_rate'] / r['sign_rate']:.2f} × Ed25519 signatures on one core "
         f"({r['sign_rate']:.0f}/s)"),
        (f"reconcile p99, {r['ledger_entries']:,.0f} ledger entries ÷ an empty ledger "
         f"(a fresh outlet, batches of {r['ratio_batch']:.0f})",
         f"{r['ratio_p99']:.2f} × ({r['full_p99_ms']:.1f} / {r['empty_p99_ms']:.1f} ms)", "≤ 1.2 ×",
         f"p50 {r['full_p50_ms']:.1f} / {r['empty_p50_ms']:.1f} ms; one durable commit = {commit_ms:.2f} ms"),
        (f"two instances ÷ one on this machine, reconciliation from {r['pair_outlets']:.0f} outlets "
         f"(batches of {r['pair_batch']:.0f})",
         f"{r['pair_ratio']:.2f} × ({r['two_rate']:.0f} / {r['one_rate']:.0f} invoices/s)", "≥ 0.9 ×",
         f"two: {r['two_rate'] / verify:.2f} × Ed25519 verification on all {CORES} cores"),
    ]
    lim_rows = [
        (f"durable INSERT + COMMIT of one 2.5 KB row, 1 connection (fsync={r['pg_fsync']}, "
         f"synchronous_commit={r['pg_synchronous_commit']})", f"{r['pg_commit_rate']:.0f} /s"),
        (f"the same from {r['pg_clients']:.0f} connections (group commit)", f"{r['pg_commit_rate_n']:.0f} /s"),
        ("`SELECT 1` round trip (psycopg, loopback TCP)", f"{r['pg_select1_ms']:.3f} ms"),
        ("Ed25519 verifications (as checked, one core)", f"{r['verify_checked_rate']:.0f} /s"),
        ("Ed25519 signatures (one core)", f"{r['sign_rate']:.0f} /s"),
        ("empty aiohttp handler round trip, loopback", f"{r['http_empty_ms']:.3f} ms"),
    ]
    out = ["| figure | measured | target | beside the limit |", "|---|---|---|---|"]
    out += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    out += ["", "PostgreSQL and the machine, measured in the same run:", "", "| limit | value |", "|---|---|"]
    out += [f"| {a} | {b} |" for a, b in lim_rows]
    out += ["", f"One run{' (quick mode: small counts, not the targets’ sizes)' if r.get('quick') else ''}; the "
                f"{r['ledger_entries']:,.0f}-entry ledger ({r['ledger_outlets']:,.0f} outlets) was filled by SQL in "
                f"{r['fill_s']:.0f} s ({r['db_gb']:.1f} GB with its indexes)."]
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.pgcloud", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small counts (a smoke run of the harness)")
    ap.add_argument("--ledger", type=int, default=None,
                    help=f"ledger entries for the p99 ratio (default {LEDGER:,}; quick: 20,000)")
    ap.add_argument("--admin-url", default=None,
                    help=f"a PostgreSQL URL allowed to create databases "
                         f"(default ${ADMIN_URL_ENV} or {DEFAULT_ADMIN_URL})")
    ap.add_argument("--only", choices=["seal"], default=None,
                    help="one step alone, its figures printed as JSON (seal: the online seal)")
    ap.add_argument("--outlets", type=int, default=200, help="--only seal: concurrent outlets (default 200)")
    ap.add_argument("--per-outlet", type=int, default=20, help="--only seal: seals per outlet (default 20)")
    ap.add_argument("--backend", choices=["postgresql", "sqlite"], default="postgresql",
                    help="--only seal: the cloud's database (default postgresql)")
    ap.add_argument("--rate", type=float, default=None,
                    help="--only seal: seals/s offered by the outlets together, each on a schedule (default: "
                         "closed loop, every outlet sending its next seal as soon as it has its answer)")
    ap.add_argument("--serve-arg", action="append", default=[],
                    help="--only seal: an extra `stalela cloud serve` argument (repeatable), e.g. --serve-arg=--threads=16")
    args = ap.parse_args()
    if args.only == "seal":
        url = admin_url(args.admin_url)
        problem = server_problem(url) if args.backend == "postgresql" else None
        if problem:
            sys.exit(problem)
        figures = seal_only(url, args.outlets, args.per_outlet, args.backend, tuple(args.serve_arg), args.rate)
        print(json.dumps({k: round(v, 1) if isinstance(v, float) else v for k, v in figures.items()}))
        return
    if args.ledger is not None and args.ledger < 1000:
        ap.error("--ledger: at least 1,000 entries")
    url = admin_url(args.admin_url)
    problem = server_problem(url)
    if problem:
        sys.exit(problem)
    started = time.perf_counter()
    try:
        row = run(args.quick, args.ledger, url)
    except KeyboardInterrupt:
        sys.exit("interrupted: the run's databases were dropped")
    except SystemExit as exc:  # SIGTERM (see _terminated_cleanly): the same, said once
        if exc.code == 128 + signal.SIGTERM:
            sys.exit("terminated: the run's databases were dropped")
        raise
    print(render(row))
    _stderr(f"(took {(time.perf_counter() - started) / 60:.1f} minutes)")


if __name__ == "__main__":
    main()
