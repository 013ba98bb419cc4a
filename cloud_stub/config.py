"""Configuration of the cloud ledger service and the files of its data folder."""
from __future__ import annotations

import os
import re
import secrets
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable

from fiscal.runtime.files import DataFile

from fiscal.signing import generate_private_key, load_private_key, save_private_key

DEFAULT_DATA_DIR = Path("./cloud-data")
DEFAULT_PORT = 8710
DATABASE_URL_ENV = "STALELA_CLOUD_DATABASE_URL"
# The file systemd's LoadCredential= puts the database URL in (it carries a password): read from
# $CREDENTIALS_DIRECTORY, so the secret is in no unit file, environment or command line.
DATABASE_URL_CREDENTIAL = "database-url"


def database_url_from_environment() -> str | None:
    """The database URL the environment gives: STALELA_CLOUD_DATABASE_URL, else the service's
    credential file ($CREDENTIALS_DIRECTORY/database-url, systemd-creds), else None (SQLite)."""
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
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    block_size: int = 500
    max_block_size: int = 10_000
    credential_validity: timedelta = timedelta(hours=12)
    # A credential's window opens a little before its issue time so that an outlet box whose
    # clock lags the cloud's by a few minutes does not seal outside its own window.
    clock_slack: timedelta = timedelta(minutes=5)
    # How long after a credential closed, expired or was revoked its missing numbers are
    # tolerated before they are flagged as gaps (the agent uploads after it renews).
    gap_grace: timedelta = timedelta(hours=1)
    audit_interval: float = 60.0
    token_ttl: timedelta = timedelta(hours=24)
    max_body: int = 8 * 1024 * 1024
    max_batch: int = 1000
    # Threads that run the service's blocking (database) calls for the HTTP layer.
    workers: int = 4
    # Verifier processes for reconciliation's pure checks (signatures, encodings, shape; see
    # verifier.py): None = one per CPU, 0 = none (every check in the service's own process).
    verify_workers: int | None = None
    # A batch smaller than this is checked in the service's own process: a round trip to the
    # workers would cost more than it saves.
    parallel_min_batch: int = 64
    # A batch is cut into this many chunks per worker: the service checks the chunks already
    # answered against the ledger while the workers check the next ones (smaller chunks: less
    # waiting at the start and the end of a batch; 8 measured a little better than 4).
    chunks_per_worker: int = 8
    admin_token: str | None = None
    # Where the ledger lives: None = the SQLite file in the data folder (zero setup); a
    # `postgresql://user@host:port/dbname` URL = that PostgreSQL database, which several service
    # instances can share (docs/operations.md, "PostgreSQL"). The data folder still holds the
    # issuer key and the admin token, which every instance on one database must share.
    database_url: str | None = None
    # DGI forwarding (docs/dgi-forwarding.md): off without a URL, so the quick start is unchanged.
    dgi_url: str | None = None
    dgi_concurrency: int = 32  # outlets forwarded at the same time by this instance
    dgi_rate: float = 0.0  # calls per second per outlet (0: only the DGI's own 429s slow us down)
    dgi_timeout: float = 30.0  # seconds for one call to the DGI
    dgi_lease: timedelta = timedelta(seconds=30)  # how long an instance holds an outlet unrenewed
    dgi_poll: float = 1.0  # seconds between looks for new ledger entries when idle
    dgi_slice: int = 100  # entries an instance forwards for one outlet before taking another turn
    dgi_backoff_cap: float = 300.0  # longest wait between attempts after failures (seconds)
    # The DGI answers `GET /api/invoice/{uid}` (the simulator does): a lost confirm answer is
    # resolved by asking. Without it, an uncertain confirm is quarantined for an operator.
    dgi_lookup: bool = True
    # The operations dashboard (cloud_stub/dashboard/): how long a login lasts, and whether its
    # cookie is marked Secure even when the request arrived over plain HTTP (behind a TLS proxy;
    # a request over HTTPS always gets a Secure cookie).
    dashboard_session_ttl: timedelta = timedelta(hours=8)
    secure_cookies: bool = False
    merchant_token_ttl: timedelta = timedelta(days=90)
    clock: Callable[[], datetime] = field(default=utc_now, repr=False)

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir)

    db_path = DataFile("cloud.sqlite3")
    issuer_key_path = DataFile("issuer-key.pem")
    admin_token_path = DataFile("admin.token")

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


_DURATION = re.compile(r"^(\d+)([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def parse_duration(text: str) -> timedelta:
    """`90s`, `15m`, `24h`, `7d` → timedelta."""
    match = _DURATION.match(text.strip())
    if not match or int(match.group(1)) == 0:
        raise ValueError(f"{text!r} is not a duration such as 15m, 24h or 7d")
    return timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})
