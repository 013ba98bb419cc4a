"""Configuration of the cloud ledger service and the files of its data folder."""
from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable

from fiscal.runtime.files import DataFile

from fiscal.signing import generate_private_key, load_private_key, save_private_key

from .settings import DATABASE_URL_CREDENTIAL, DATABASE_URL_ENV, Loaded, default, parse_duration  # noqa: F401

# The defaults come from the configuration model (cloud_stub/settings.py), their one source.
DEFAULT_DATA_DIR = Path(default("server", "data_dir"))
DEFAULT_PORT = default("server", "port")


def database_url_from_environment() -> str | None:
    """The database URL the environment gives: STALELA_CLOUD_DATABASE_URL, else the service's
    credential file ($CREDENTIALS_DIRECTORY/database-url, systemd-creds), else None (SQLite).
    For the administration commands; `serve` reads every source (settings.load)."""
    url = os.environ.get(DATABASE_URL_ENV)
    if url:
        return url
    folder = os.environ.get("CREDENTIALS_DIRECTORY")
    if folder and (Path(folder) / DATABASE_URL_CREDENTIAL).is_file():
        return (Path(folder) / DATABASE_URL_CREDENTIAL).read_text("utf-8").strip() or None
    return None


TIME_ZONES = ("Africa/Kinshasa", "Africa/Lubumbashi")


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


@dataclass
class CloudConfig:
    data_dir: Path = DEFAULT_DATA_DIR
    host: str = default("server", "host")
    port: int = DEFAULT_PORT
    block_size: int = default("ledger", "block_size")
    max_block_size: int = default("ledger", "max_block_size")
    credential_validity: timedelta = default("ledger", "validity")
    # A credential's window opens a little before its issue time so that an outlet box whose
    # clock lags the cloud's by a few minutes does not seal outside its own window.
    clock_slack: timedelta = default("ledger", "clock_slack")
    # How long after a credential closed, expired or was revoked its missing numbers are
    # tolerated before they are flagged as gaps (the agent uploads after it renews).
    gap_grace: timedelta = default("ledger", "gap_grace")
    audit_interval: float = default("ledger", "audit_interval").total_seconds()
    token_ttl: timedelta = default("ledger", "token_ttl")
    max_body: int = default("server", "max_body")
    max_batch: int = default("ledger", "max_batch")
    # Threads that run the service's blocking (database) calls for the HTTP layer.
    workers: int = default("server", "threads")
    # Verifier processes for reconciliation's pure checks (signatures, encodings, shape; see
    # verifier.py): None = one per CPU, 0 = none (every check in the service's own process).
    verify_workers: int | None = None
    # A batch smaller than this is checked in the service's own process: a round trip to the
    # workers would cost more than it saves.
    parallel_min_batch: int = default("ledger", "parallel_min_batch")
    # A batch is cut into this many chunks per worker: the service checks the chunks already
    # answered against the ledger while the workers check the next ones (smaller chunks: less
    # waiting at the start and the end of a batch; 8 measured a little better than 4).
    chunks_per_worker: int = default("ledger", "chunks_per_worker")
    admin_token: str | None = None
    # Where the ledger lives: None = the SQLite file in the data folder (zero setup); a
    # `postgresql://user@host:port/dbname` URL = that PostgreSQL database, which several service
    # instances can share (docs/operations.md, "PostgreSQL"). The data folder still holds the
    # issuer key and the admin token, which every instance on one database must share.
    database_url: str | None = None
    # DGI forwarding (docs/dgi-forwarding.md): off without a URL, so the quick start is unchanged.
    dgi_url: str | None = None
    dgi_concurrency: int = default("dgi", "concurrency")  # outlets forwarded at the same time by this instance
    dgi_rate: float = default("dgi", "rate")  # calls per second per outlet (0: only the DGI's own 429s slow us down)
    dgi_timeout: float = default("dgi", "timeout").total_seconds()  # seconds for one call to the DGI
    dgi_lease: timedelta = default("dgi", "lease")  # how long an instance holds an outlet unrenewed
    dgi_poll: float = default("dgi", "poll").total_seconds()  # seconds between looks for new ledger entries when idle
    dgi_slice: int = default("dgi", "slice")  # entries an instance forwards for one outlet before taking another turn
    dgi_backoff_cap: float = default("dgi", "backoff_cap").total_seconds()  # longest wait between attempts after failures (seconds)
    # The DGI answers `GET /api/invoice/{uid}` (the simulator does): a lost confirm answer is
    # resolved by asking. Without it, an uncertain confirm is quarantined for an operator.
    dgi_lookup: bool = default("dgi", "lookup")
    # The operations dashboard (cloud_stub/dashboard/): how long a login lasts, and whether its
    # cookie is marked Secure even when the request arrived over plain HTTP (behind a TLS proxy;
    # a request over HTTPS always gets a Secure cookie).
    dashboard_session_ttl: timedelta = default("server", "session_ttl")
    secure_cookies: bool = default("server", "secure_cookies")
    merchant_token_ttl: timedelta = default("ledger", "merchant_token_ttl")
    clock: Callable[[], datetime] = field(default=utc_now, repr=False)

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir)

    db_path = DataFile("cloud.sqlite3")
    issuer_key_path = DataFile("issuer-key.pem")
    admin_token_path = DataFile("admin.token")

    @classmethod
    def from_settings(cls, loaded: Loaded) -> "CloudConfig":
        """The service's configuration from the effective settings of `stalela cloud serve`."""
        server, ledger, dgi = loaded.settings.server, loaded.settings.ledger, loaded.settings.dgi
        return cls(
            data_dir=Path(server.data_dir), host=server.host, port=server.port, workers=server.threads,
            verify_workers=None if server.workers == "auto" else server.workers, max_body=server.max_body,
            secure_cookies=server.secure_cookies, dashboard_session_ttl=server.session_ttl,
            admin_token=loaded.admin_token, database_url=loaded.database_url,
            block_size=ledger.block_size, max_block_size=ledger.max_block_size,
            credential_validity=ledger.validity, clock_slack=ledger.clock_slack, gap_grace=ledger.gap_grace,
            audit_interval=ledger.audit_interval.total_seconds(), token_ttl=ledger.token_ttl,
            merchant_token_ttl=ledger.merchant_token_ttl, max_batch=ledger.max_batch,
            parallel_min_batch=ledger.parallel_min_batch, chunks_per_worker=ledger.chunks_per_worker,
            dgi_url=dgi.url or None, dgi_concurrency=dgi.concurrency, dgi_rate=dgi.rate,
            dgi_timeout=dgi.timeout.total_seconds(), dgi_lease=dgi.lease, dgi_lookup=dgi.lookup,
            dgi_poll=dgi.poll.total_seconds(), dgi_slice=dgi.slice, dgi_backoff_cap=dgi.backoff_cap.total_seconds())

    @property
    def dgi_tokens_path(self) -> Path:
        """{outlet id: the e-MCF token (JWT) the DGI issued for the outlet's point of sale}, mode 0600."""
        return self.data_dir / "dgi-tokens.json"


def ensure_data_dir(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True, mode=0o700)


def load_or_create_issuer_key(path: Path):
    """The issuer's Ed25519 key: created on first start (mode 0600), loaded afterwards."""
    if not path.exists():
        save_private_key(generate_private_key(), path)
    return load_private_key(path)


def load_or_create_admin_token(path: Path) -> str:
    """The admin token: generated into the data folder (mode 0600) on first start."""
    if path.exists():
        mode = path.stat().st_mode & 0o777
        if mode & 0o077:
            raise PermissionError(f"{path} is readable by others (mode {mode:o}); run: chmod 600 {path}")
        token = path.read_text(encoding="ascii").strip()
        if token:
            return token
    token = "stla_" + secrets.token_urlsafe(32)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, (token + "\n").encode("ascii"))
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return token
