"""What `stalela cloud serve` takes: one model, its sources, and what `config check` shows.

The `CloudSettings` model below is the one source of every key, default, range and comment: the
`CloudConfig` defaults, the `serve` options' help, `stalela cloud config template` and `config
check` are all derived from it. Sources, strongest first:

    1. a command-line option of `stalela cloud serve` (--port, --dgi-url, ...)
    2. an environment variable STALELA_CLOUD_<SECTION>__<KEY> (STALELA_CLOUD_SERVER__PORT=8711);
       STALELA_CLOUD_DATABASE_URL is still read as database.url
    3. the TOML file named by --config or $STALELA_CLOUD_CONFIG
    4. the defaults

Secrets are never in the file itself: the database URL (it carries a password) comes from
`database.url_file`, from systemd's credential $CREDENTIALS_DIRECTORY/database-url, or from the
environment; the admin token from `server.admin_token_file` (else the data folder's admin.token).
"""
from __future__ import annotations

import os
import re
import stat
import tomllib
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator,
                      model_validator)
from pydantic_settings import PydanticBaseSettingsSource

from fiscal.runtime.settings import (SourcesInOrder, commented_toml, env_keys, mask_url, problem_lines,
                                    section_models, sectioned, toml_value)

ENV_PREFIX = "STALELA_CLOUD_"
CONFIG_ENV = "STALELA_CLOUD_CONFIG"
# The name the database URL had before the configuration file: still read, as database.url.
DATABASE_URL_ENV = "STALELA_CLOUD_DATABASE_URL"
# The file systemd's LoadCredential= puts the database URL in: read from $CREDENTIALS_DIRECTORY,
# so the secret is in no unit file, environment or command line.
DATABASE_URL_CREDENTIAL = "database-url"


class ConfigError(ValueError):
    """An invalid configuration: `problems` has one line per problem, named section.key."""

    def __init__(self, problems: list[str]):
        super().__init__("; ".join(problems))
        self.problems = problems


# ------------------------------------------------------------------------------ durations
_SPAN = re.compile(r"^(\d+(?:\.\d+)?)([smhd]?)$")
_UNITS = {"": "seconds", "s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def parse_duration(text: str, *, zero: bool = False) -> timedelta:
    """`90s`, `15m`, `24h`, `7d` (a bare number is seconds) → timedelta; zero only when allowed."""
    match = _SPAN.match(str(text).strip())
    if not match or (not zero and float(match.group(1)) == 0):
        raise ValueError(f"{text!r} is not a duration such as 15m, 24h or 7d")
    return timedelta(**{_UNITS[match.group(2)]: float(match.group(1))})


def duration_text(value: timedelta) -> str:
    """The shortest way to write a duration: 12h, 90d, 30s, 0.5s."""
    seconds = value.total_seconds()
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        # 24h reads better than 1d; 90d better than 2160h.
        if seconds and seconds % size == 0 and (unit != "d" or seconds > 86400):
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s" if seconds == int(seconds) else f"{seconds:g}s"


def _duration(value: Any) -> timedelta:
    if isinstance(value, timedelta):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return timedelta(seconds=value)
    if isinstance(value, str):
        try:
            return parse_duration(value, zero=True)
        except ValueError:
            pass
    raise ValueError("must be a duration such as 30s, 15m, 12h or 90d")


def Span(low: str, high: str):
    """A duration between `low` and `high` (both included), written 30s, 15m, 12h or 90d."""
    lowest, highest = parse_duration(low, zero=True), parse_duration(high)

    def within(value: timedelta) -> timedelta:
        if not lowest <= value <= highest:
            raise ValueError(f"must be between {low} and {high}")
        return value
    return Annotated[timedelta, BeforeValidator(_duration), AfterValidator(within)]


def _workers(value: Any) -> int | str:
    """"auto" (one verifier process per CPU) or a count from 0 to 256."""
    if value == "auto":
        return value
    try:
        count = int(value) if not isinstance(value, (bool, float)) else -1
    except (TypeError, ValueError):
        count = -1
    if not 0 <= count <= 256:
        raise ValueError("must be \"auto\" or a number from 0 to 256")
    return count


# ------------------------------------------------------------------------------ the model
class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ServerSection(_Section):
    data_dir: str = Field("./cloud-data", min_length=1,
                          description="The data folder: the SQLite ledger (without a database.url), the issuer key,\n"
                                      "the admin token and the DGI tokens. Every instance on one database shares\n"
                                      "its issuer key and admin token.")
    host: str = Field("127.0.0.1", min_length=1, description="Address to listen on (behind a TLS proxy: loopback).")
    port: int = Field(8710, ge=0, le=65535, description="Port to listen on (0: any free port, logged in cloud.ready).")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Least severe level logged.")
    threads: int = Field(4, ge=1, le=256, description="Threads running the database calls of HTTP requests (also the\n"
                                                      "PostgreSQL pool's size).")
    workers: Annotated[int | str, BeforeValidator(_workers)] = Field("auto", description="Verifier processes checking reconcile batches in parallel (signatures,\n"
                                                               "encodings): \"auto\" = one per CPU, 0 = in the service's process.")
    max_body: int = Field(8 * 1024 * 1024, ge=1024, le=1024 * 1024 * 1024,
                          description="Largest request body accepted, in bytes (413 beyond).")
    secure_cookies: bool = Field(False, description="Mark the dashboard's session cookie Secure even over plain HTTP (behind\n"
                                                    "a TLS proxy; a request over HTTPS always gets a Secure cookie).")
    session_ttl: Span("1m", "30d") = Field(timedelta(hours=8), description="How long a dashboard login lasts.")
    admin_token_file: str = Field("", description="A file holding the admin token (a secret: 0600 or 0640, or a systemd credential).\n"
                                                  "Empty: admin.token in the data folder, generated on first start.")


class DatabaseSection(_Section):
    url: str = Field("", description="Empty: the SQLite file in the data folder. postgresql://user@host:port/dbname:\n"
                                     "that PostgreSQL database, which several instances may share. It carries a\n"
                                     "password: give it through url_file, the credential $CREDENTIALS_DIRECTORY/\n"
                                     "database-url or the environment rather than here.")
    url_file: str = Field("", description="A file holding the database URL (read at start; 0600 or 0640).")

    @field_validator("url")
    @classmethod
    def _postgresql(cls, value: str) -> str:
        if value and not _is_postgresql(value):
            raise ValueError("must be a postgresql:// URL, or empty for the SQLite file in the data folder")
        return value


class LedgerSection(_Section):
    block_size: int = Field(500, ge=1, le=1_000_000, description="Fiscal numbers per delegated credential when the agent does not ask for a size.")
    max_block_size: int = Field(10_000, ge=1, le=1_000_000, description="Most fiscal numbers one delegated credential may hold.")
    validity: Span("1m", "30d") = Field(timedelta(hours=12), description="How long a delegated credential is valid.")
    clock_slack: Span("0s", "1h") = Field(timedelta(minutes=5), description="A credential's window opens this long before its issue time (a box whose\n"
                                                                            "clock lags the cloud's still seals inside it).")
    gap_grace: Span("0s", "30d") = Field(timedelta(hours=1), description="How long after a credential closed, expired or was revoked its missing\n"
                                                                        "numbers wait before they are flagged as gaps.")
    audit_interval: Span("0s", "1d") = Field(timedelta(minutes=1), description="How often gap detection runs (0s: never on its own; `stalela cloud audit`).")
    token_ttl: Span("1m", "365d") = Field(timedelta(hours=24), description="Validity of an enrollment or provisioning token when none is asked for.")
    merchant_token_ttl: Span("1m", "3650d") = Field(timedelta(days=90), description="Validity of a merchant's dashboard token when none is asked for.")
    max_batch: int = Field(1000, ge=1, le=100_000, description="Most invoices in one reconcile request (422 beyond).")
    parallel_min_batch: int = Field(64, ge=1, le=100_000, description="A reconcile batch smaller than this is checked in the service's own process.")
    chunks_per_worker: int = Field(8, ge=1, le=1000, description="A batch is cut into this many chunks per verifier process.")

    @model_validator(mode="after")
    def _block_within_maximum(self) -> "LedgerSection":
        if self.block_size > self.max_block_size:
            raise ValueError(f"block_size {self.block_size} is above max_block_size {self.max_block_size}")
        return self


class DgiSection(_Section):
    url: str = Field("", description="The DGI's e-MCF base URL: every sealed invoice is forwarded there. Empty: off.\n"
                                     "Tokens per outlet: `stalela cloud dgi token` (kept in the data folder).")
    concurrency: int = Field(32, ge=1, le=10_000, description="Outlets forwarded at the same time by this instance.")
    rate: float = Field(0.0, ge=0, le=100_000, description="Calls per second per outlet (0: only the DGI's own 429s slow us down).")
    timeout: Span("0.1s", "10m") = Field(timedelta(seconds=30), description="Longest wait for one call to the DGI.")
    lease: Span("1s", "1h") = Field(timedelta(seconds=30), description="How long an instance holds an outlet's queue unrenewed: after a crash\n"
                                                                      "another instance takes the outlet over after this long.")
    lookup: bool = Field(True, description="The DGI answers GET /api/invoice/{uid}: a lost confirm answer is resolved by\n"
                                           "asking. Without it such an entry is quarantined for an operator.")
    poll: Span("0.01s", "1h") = Field(timedelta(seconds=1), description="Time between looks for new ledger entries when idle.")
    slice: int = Field(100, ge=1, le=100_000, description="Entries forwarded for one outlet before another outlet's turn.")
    backoff_cap: Span("1s", "1d") = Field(timedelta(minutes=5), description="Longest wait between attempts after failures.")

    @field_validator("url")
    @classmethod
    def _http(cls, value: str) -> str:
        if value:
            parts = urlsplit(value)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError("must be an http:// or https:// URL with a host, or empty (forwarding off)")
        return value


class CloudSettings(SourcesInOrder):
    """Stalela cloud ledger service configuration. Every key is optional; the values shown are the defaults."""

    model_config = sectioned(ENV_PREFIX)

    server: ServerSection = ServerSection()
    database: DatabaseSection = DatabaseSection()
    ledger: LedgerSection = LedgerSection()
    dgi: DgiSection = DgiSection()
    # init arguments are the command line's values; the file's are given to load() by _Loading
    # below. The defaults come last, from the model itself.
    SOURCES = ("init", "env")


class _FileSource(PydanticBaseSettingsSource):
    """The TOML file's tables, weakest of the sources."""

    def __init__(self, settings_cls, values: dict[str, Any]):
        super().__init__(settings_cls)
        self.values = values

    def get_field_value(self, field, field_name):  # pragma: no cover - __call__ does the work
        return self.values.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return self.values


def _sections() -> dict[str, type[_Section]]:
    return section_models(CloudSettings)


def default(section: str, key: str) -> Any:
    """A key's default, from the model (CloudConfig and the serve options read it here)."""
    return _sections()[section].model_fields[key].default


SECRET_KEYS = {"database.url"}


def _is_postgresql(url: str) -> bool:
    return url.split(":", 1)[0] in ("postgresql", "postgres")


# ------------------------------------------------------------------------------ loading
@dataclass
class Loaded:
    """The effective configuration: the validated model, where each key came from, and the
    secrets read from their files."""

    settings: CloudSettings
    origins: dict[tuple[str, str], str]
    config_file: Path | None
    database_url: str | None = None
    database_url_origin: str = "default"
    admin_token: str | None = field(default=None, repr=False)

    def rows(self) -> list[dict[str, Any]]:
        """Every key with its value as written in the file (secrets masked) and its origin."""
        rows = []
        for section, model in _sections().items():
            for key in model.model_fields:
                value = getattr(getattr(self.settings, section), key)
                origin = self.origins[(section, key)]
                if (section, key) == ("database", "url"):
                    # The URL in use, wherever it came from (a file, a credential), masked.
                    value = mask_url(self.database_url or "")
                    origin = self.database_url_origin if self.database_url else origin
                rows.append({"key": f"{section}.{key}", "value": shown(value), "origin": origin})
        return rows


def shown(value: Any) -> Any:
    """A value as the file writes it (durations as 12h), for JSON and text."""
    return duration_text(value) if isinstance(value, timedelta) else value


def config_path(option: Path | None) -> tuple[Path | None, str]:
    """The configuration file to read and what named it (--config, then $STALELA_CLOUD_CONFIG)."""
    if option is not None:
        return option, "--config"
    named = os.environ.get(CONFIG_ENV)
    return (Path(named), f"${CONFIG_ENV}") if named else (None, "")


def _read_file(path: Path, named_by: str) -> dict[str, Any]:
    try:
        text = path.read_text("utf-8")
    except FileNotFoundError:
        raise ConfigError([f"configuration file {path} (from {named_by}) does not exist"]) from None
    except IsADirectoryError:
        raise ConfigError([f"configuration file {path} (from {named_by}) is a directory"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"cannot read configuration file {path}: {getattr(exc, 'strerror', None) or exc}"]) from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path} is not valid TOML: {exc}"]) from None
    problems = []
    for name, table in raw.items():
        if not isinstance(table, dict):
            problems.append(f"{path}: {name} = … is outside any section (keys belong in [server], [database], "
                            "[ledger] or [dgi])")
        elif name not in _sections():
            problems.append(f"{path}: unknown section [{name}]")
    if problems:
        raise ConfigError(problems)
    return raw


def _environment() -> tuple[dict[tuple[str, str], str], list[str]]:
    """The STALELA_CLOUD_<SECTION>__<KEY> variables set, and the problems with their names."""
    found, problems = {}, []
    for (section, key), name in env_keys(ENV_PREFIX).items():
        if not section or section.startswith("_") or not key:
            continue  # not ours: the agent's STALELA_CLOUD__URL, for one
        if section not in _sections():
            problems.append(f"{name}: unknown section [{section}]")
        found[(section, key)] = name
    return found, problems


def load(option: Path | None = None, cli: dict[tuple[str, str], tuple[str, Any]] | None = None) -> Loaded:
    """Read, merge and validate every source; read the secret files. Raises ConfigError with one
    line per problem. `cli` is {(section, key): (option name, value)} for the options given."""
    cli = cli or {}
    path, named_by = config_path(option)
    raw = _read_file(path, named_by) if path is not None else {}
    env, problems = _environment()
    legacy = os.environ.get(DATABASE_URL_ENV)
    init: dict[str, dict[str, Any]] = {}
    for (section, key), (_, value) in cli.items():
        init.setdefault(section, {})[key] = value

    class _Loading(CloudSettings):
        @classmethod
        def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings,
                                       file_secret_settings):
            file_values = dict(raw)
            if legacy and ("database", "url") not in env:
                # The old variable: as strong as the environment, weaker than the new name.
                file_values = {**file_values, "database": {**file_values.get("database", {}), "url": legacy}}
            return (init_settings, env_settings, _FileSource(settings_cls, file_values))

    try:
        settings: CloudSettings = _Loading(**init)
    except ValidationError as exc:
        problems += [_with_origin(line, cli, env, legacy) for line in problem_lines(exc, hidden=SECRET_KEYS)]
    if problems:
        raise ConfigError(problems)

    origins = {}
    for section, model in _sections().items():
        for key in model.model_fields:
            if (section, key) in cli:
                origins[(section, key)] = f"cli {cli[(section, key)][0]}"
            elif (section, key) in env:
                origins[(section, key)] = f"env {env[(section, key)]}"
            elif (section, key) == ("database", "url") and legacy:
                origins[(section, key)] = f"env {DATABASE_URL_ENV}"
            elif key in raw.get(section, {}):
                origins[(section, key)] = "file"
            else:
                origins[(section, key)] = "default"
    loaded = Loaded(settings, origins, path)
    _resolve_secrets(loaded)
    return loaded


def _with_origin(line: str, cli, env, legacy) -> str:
    """A problem line, told where the bad value came from when it was not the file."""
    name = line.split(":", 1)[0].removeprefix("unknown key ")
    section, _, key = name.partition(".")
    if (section, key) in cli:
        return f"{line} [from {cli[(section, key)][0]}]"
    if (section, key) in env:
        return f"{line} [from {env[(section, key)]}]"
    if (section, key) == ("database", "url") and legacy:
        return f"{line} [from {DATABASE_URL_ENV}]"
    return line


_RANK = {"cli": 3, "env": 2, "file": 1, "default": 0}


def _resolve_secrets(loaded: Loaded) -> None:
    db = loaded.settings.database
    url_origin, file_origin = loaded.origins[("database", "url")], loaded.origins[("database", "url_file")]
    url_rank, file_rank = _RANK[url_origin.split()[0]], _RANK[file_origin.split()[0]]
    problems = []
    if db.url and db.url_file and url_rank == file_rank:
        problems.append(f"database.url and database.url_file are both set ({url_origin}): keep one")
    elif db.url_file and file_rank > url_rank:
        url = _read_secret(db.url_file, "database.url_file", problems)
        if url is not None:
            if not _is_postgresql(url):
                problems.append(f"database.url_file: {db.url_file} does not hold a postgresql:// URL")
            loaded.database_url, loaded.database_url_origin = url, f"{file_origin} (url_file {db.url_file})"
    elif db.url:
        loaded.database_url, loaded.database_url_origin = db.url, url_origin
    else:
        credentials = os.environ.get("CREDENTIALS_DIRECTORY")
        secret = Path(credentials) / DATABASE_URL_CREDENTIAL if credentials else None
        if secret is not None and secret.is_file():
            url = _read_secret(str(secret), "the credential database-url", problems, check_mode=False)
            if url is not None and not _is_postgresql(url):
                problems.append(f"the credential {secret} does not hold a postgresql:// URL")
            loaded.database_url = url
            loaded.database_url_origin = f"credential $CREDENTIALS_DIRECTORY/{DATABASE_URL_CREDENTIAL}"
    token_file = loaded.settings.server.admin_token_file
    if token_file:
        token = _read_secret(token_file, "server.admin_token_file", problems)
        if token is not None and (len(token) < 16 or not (token.isascii() and token.isprintable()) or " " in token):
            problems.append(f"server.admin_token_file: {token_file} must hold one token of at least 16 printable "
                            "ASCII characters, no spaces")
        loaded.admin_token = token
    if problems:
        raise ConfigError(problems)


def _read_secret(path: str, name: str, problems: list[str], *, check_mode: bool = True) -> str | None:
    """A secret file's one line; a problem line instead when it cannot be used."""
    file = Path(path)
    try:
        mode = stat.S_IMODE(file.stat().st_mode)
        if check_mode and mode & 0o007:
            problems.append(f"{name}: {file} is readable by every user (mode {mode:o}); run: chmod 600 {file}")
            return None
        text = file.read_text("utf-8").strip()
    except FileNotFoundError:
        problems.append(f"{name}: {file} does not exist")
        return None
    except IsADirectoryError:
        problems.append(f"{name}: {file} is a directory")
        return None
    except OSError as exc:
        problems.append(f"{name}: cannot read {file}: {exc.strerror}")
        return None
    except UnicodeDecodeError:
        problems.append(f"{name}: {file} is not UTF-8 text")
        return None
    if not text or "\n" in text:
        problems.append(f"{name}: {file} must hold exactly one line")
        return None
    return text


# ------------------------------------------------------------------------------ the template
def template() -> str:
    """A TOML file with every key at its default, each commented from the model."""
    header = [f"# {CloudSettings.__doc__}",
              "# Environment variables STALELA_CLOUD_<SECTION>__<KEY> and `stalela cloud serve` options win over",
              "# this file. Durations: 30s, 15m, 12h, 90d."]
    return commented_toml(header, _sections(), lambda value: toml_value(shown(value)))
