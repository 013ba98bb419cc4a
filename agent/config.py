"""Agent configuration: `config.toml` in the data folder, environment overrides, validated ranges.

The one source of defaults, ranges and comments is the `Settings` model below: `config.toml` as
`stalela agent init` writes it, the `AgentConfig` defaults and `stalela config check` are all
derived from it. Precedence: environment (`STALELA_<SECTION>__<KEY>`, e.g. STALELA_SYNC__INTERVAL=5)
over the file over the defaults.

The data folder holds everything the agent owns (the folder itself 0700):

    config.toml          this configuration (no secrets; 0600 all the same)
    agent.db             the journal (SQLite, WAL; 0600)
    enrollment.json      outlet identity and the cloud issuer's public key (public data)
    keys/agent.key       the agent's Ed25519 private key (0600)
    keys/cloud.token     the agent's token for the cloud API (0600)
"""
from __future__ import annotations

import ipaddress
import os
import stat
import tomllib
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from fiscal.runtime.files import DataFile
from fiscal.runtime.settings import (SourcesInOrder, commented_toml, env_keys, mask_url, problem_lines,
                                    section_models, sectioned, toml_value)
from typing import Any, Literal
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

DRC_ZONES = ("Africa/Kinshasa", "Africa/Lubumbashi")
SIGNERS = ("device", "cloud", "delegated", "queued")
ENV_PREFIX = "STALELA_"


class ConfigError(ValueError):
    pass


# ------------------------------------------------------------------------------ the model
class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AgentSection(_Section):
    host: str = Field("127.0.0.1", description="The POS API listens on loopback only unless you change this on purpose.")
    port: int = Field(8720, ge=1, le=65535, description="Port of the POS API.")
    time_zone: Literal["", "Africa/Kinshasa", "Africa/Lubumbashi"] = Field(
        "", description="The outlet's time zone: Africa/Kinshasa (UTC+1) or Africa/Lubumbashi (UTC+2).\n"
                        "Left empty, the zone recorded for the outlet at enrollment is used.")
    isf: str = Field("", description="Identifier of this invoicing system (ISF) printed on receipts; empty = the outlet's ISF.")
    max_body_bytes: int = Field(1048576, ge=1024, le=64 * 1024 * 1024,
                                description="Largest request body accepted, in bytes (413 beyond).")
    emcf_pending_seconds: int = Field(120, ge=1, le=3600,
                                      description="Seconds an e-MCF phase 1 request (POST /api/invoice) waits for its\n"
                                                  "confirm before it expires, as the DGI's own service does (about 2 minutes).")


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class CloudSection(_Section):
    url: str = Field("http://127.0.0.1:8710", description="The cloud API. Plain http:// only to this machine (loopback)\n"
                                                          "unless allow_insecure_http = true.")
    timeout: float = Field(2.0, gt=0, le=300,
                           description="Seconds before a cloud call is given up (the cashier never waits longer than this).")
    allow_insecure_http: bool = Field(False, description="Allow an http:// cloud url that is not loopback (tokens and invoices then\n"
                                                         "cross the network unencrypted): for a test bench only.")

    @field_validator("url")
    @classmethod
    def _url_shape(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"must be an http:// or https:// URL with a host, not {value!r}")
        return value

    @model_validator(mode="after")
    def _no_plain_http_on_the_network(self) -> "CloudSection":
        parts = urlsplit(self.url)
        if parts.scheme == "http" and not _loopback(parts.hostname or "") and not self.allow_insecure_http:
            raise ValueError(f"cloud.url {_mask_url(self.url)} is plain http to another machine: use https://, or "
                             "set cloud.allow_insecure_http = true on purpose")
        return self


class CredentialSection(_Section):
    block_size: int = Field(500, ge=1, le=10_000, description="Ask the cloud for this many fiscal numbers per delegated credential.")
    renew_below_numbers: int = Field(100, ge=0, description="Fetch the next credential when fewer numbers than this are left in the active one...")
    renew_before_seconds: int = Field(3600, ge=0, description="...or when it expires within this many seconds.")
    check_interval: float = Field(30.0, ge=0.1, le=86400, description="How often the renewal check runs, in seconds.")


class SealingSection(_Section):
    max_batch: int = Field(64, ge=1, le=10_000, description="Largest number of invoices committed in one transaction (group commit).")
    process: Literal["auto", "on", "off"] = Field(
        "auto", description="Seal delegated invoices in a second process beside the API's, so validation and sealing use\n"
                            "two cores: \"auto\" (when the machine has more than one core), \"on\" or \"off\". See docs/architecture.md.")
    process_idle_seconds: float = Field(300.0, gt=0, description="The sealing process starts when sales overlap and stops after this many seconds without one.")


class SignerSection(_Section):
    policy: list[Literal["device", "cloud", "delegated", "queued"]] = Field(
        ["device", "cloud", "delegated"], min_length=1,
        description="Who seals, in order of preference. \"device\" is used only when [device] url is set, \"cloud\"\n"
                    "only while the cloud answers within cloud_timeout; \"delegated\" needs a valid credential.\n"
                    "Add \"queued\" last to store drafts durably (202) instead of refusing when no signer can seal.")
    cloud_timeout: float = Field(1.0, gt=0, le=60, description="Seconds the cloud signer may take before the next signer is tried (the cashier's budget).")
    cloud_clock_margin: float = Field(1.0, ge=0, le=30, description="Seconds allowed for the difference between this box's clock and the cloud's: each online seal\n"
                                      "carries a deadline (now + cloud_timeout) after which the cloud never commits it, and the agent\n"
                                      "waits this much longer for the cloud's answer.")
    breaker_seconds: float = Field(30.0, gt=0, le=3600, description="After a signer fails, skip it for this many seconds (a background probe retries it).")

    @field_validator("policy")
    @classmethod
    def _once_each(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("names each signer at most once")
        return value


class DeviceSection(_Section):
    url: str = Field("", description="The MCF: a tty path (/dev/stalela-mcf, the udev rule's link; /dev/ttyACM0), a pyserial URL\n"
                                     "(socket://host:port), usb:VID:PID, or sim:///path/state.json for the bundled simulator.\n"
                                     "Empty: no device.")


class ReportsSection(_Section):
    z_time: str = Field("23:59", description="Local time (HH:MM, outlet's zone) of the automatic Z closing, if nobody ran one that day.")

    @field_validator("z_time")
    @classmethod
    def _hh_mm(cls, value: str) -> str:
        try:
            datetime.strptime(value, "%H:%M")
        except ValueError:
            raise ValueError(f"must be HH:MM, not {value!r}") from None
        return value


class SyncSection(_Section):
    batch_size: int = Field(500, ge=1, le=1000, description="Sealed invoices uploaded to the cloud per request (the cloud takes 1000 at most).")
    # A zero or negative interval made the sync loop spin: the floor is a twentieth of a second.
    interval: float = Field(5.0, ge=0.05, le=3600, description="Seconds between outbox uploads once it is caught up (with +-20 % jitter).")
    retention_days: int = Field(30, ge=1, le=3650, description="Days a local copy is kept after the cloud acknowledged it.")
    heartbeat_interval: float = Field(600.0, ge=10, le=86400, description="Seconds between the agent's heartbeats to the cloud (its outlet's \"last seen\" when there are no sales).")


class Settings(SourcesInOrder):
    """Stalela Edge agent configuration. Every key is optional; the values shown are the defaults."""

    model_config = sectioned(ENV_PREFIX)
    # The file's values come in as init arguments; the environment wins over them.
    SOURCES = ("env", "init")

    agent: AgentSection = AgentSection()
    cloud: CloudSection = CloudSection()
    credential: CredentialSection = CredentialSection()
    sealing: SealingSection = SealingSection()
    signer: SignerSection = SignerSection()
    device: DeviceSection = DeviceSection()
    reports: ReportsSection = ReportsSection()
    sync: SyncSection = SyncSection()


class _FileOnly(Settings):
    """The same model without the environment: checks what a file says on its own."""

    SOURCES = ("init",)


# (section, key) in the file -> attribute of AgentConfig. The attribute names are what the rest
# of the code reads; they do not change with the file's layout.
ATTRIBUTES: dict[tuple[str, str], str] = {
    ("agent", "host"): "host", ("agent", "port"): "port", ("agent", "time_zone"): "time_zone",
    ("agent", "isf"): "isf", ("agent", "max_body_bytes"): "max_body_bytes",
    ("agent", "emcf_pending_seconds"): "emcf_pending_seconds",
    ("cloud", "url"): "cloud_url", ("cloud", "timeout"): "cloud_timeout",
    ("cloud", "allow_insecure_http"): "cloud_allow_insecure_http",
    ("credential", "block_size"): "block_size", ("credential", "renew_below_numbers"): "renew_below_numbers",
    ("credential", "renew_before_seconds"): "renew_before_seconds",
    ("credential", "check_interval"): "check_interval",
    ("sealing", "max_batch"): "max_batch", ("sealing", "process"): "sealing_process",
    ("sealing", "process_idle_seconds"): "sealing_process_idle",
    ("signer", "policy"): "signer_policy", ("signer", "cloud_timeout"): "signer_cloud_timeout",
    ("signer", "cloud_clock_margin"): "signer_cloud_clock_margin",
    ("signer", "breaker_seconds"): "breaker_seconds",
    ("device", "url"): "device_url",
    ("reports", "z_time"): "reports_z_time",
    ("sync", "batch_size"): "sync_batch_size", ("sync", "interval"): "sync_interval",
    ("sync", "retention_days"): "retention_days", ("sync", "heartbeat_interval"): "heartbeat_interval",
}


def _sections() -> dict[str, type[_Section]]:
    return section_models(Settings)


def _default(section: str, key: str) -> Any:
    value = _sections()[section].model_fields[key].default
    return tuple(value) if isinstance(value, list) else value


# ------------------------------------------------------------------------------ what the code reads
@dataclass(frozen=True)
class AgentConfig:
    data_dir: Path
    host: str = _default("agent", "host")
    port: int = _default("agent", "port")
    time_zone: str = _default("agent", "time_zone")
    isf: str = _default("agent", "isf")
    max_body_bytes: int = _default("agent", "max_body_bytes")
    emcf_pending_seconds: int = _default("agent", "emcf_pending_seconds")
    cloud_url: str = _default("cloud", "url")
    cloud_timeout: float = _default("cloud", "timeout")
    cloud_allow_insecure_http: bool = _default("cloud", "allow_insecure_http")
    block_size: int = _default("credential", "block_size")
    renew_below_numbers: int = _default("credential", "renew_below_numbers")
    renew_before_seconds: int = _default("credential", "renew_before_seconds")
    check_interval: float = _default("credential", "check_interval")
    max_batch: int = _default("sealing", "max_batch")
    sealing_process: str = _default("sealing", "process")
    sealing_process_idle: float = _default("sealing", "process_idle_seconds")
    signer_policy: tuple = _default("signer", "policy")
    signer_cloud_timeout: float = _default("signer", "cloud_timeout")
    signer_cloud_clock_margin: float = _default("signer", "cloud_clock_margin")
    breaker_seconds: float = _default("signer", "breaker_seconds")
    device_url: str = _default("device", "url")
    reports_z_time: str = _default("reports", "z_time")
    sync_batch_size: int = _default("sync", "batch_size")
    sync_interval: float = _default("sync", "interval")
    retention_days: int = _default("sync", "retention_days")
    heartbeat_interval: float = _default("sync", "heartbeat_interval")

    @property
    def sealing_process_enabled(self) -> bool:
        if self.sealing_process == "auto":
            return (os.cpu_count() or 1) > 1
        return self.sealing_process == "on"

    # The files of the data folder.
    db_path = DataFile("agent.db")
    key_path = DataFile("keys", "agent.key")
    token_path = DataFile("keys", "cloud.token")
    enrollment_path = DataFile("enrollment.json")
    config_path = DataFile("config.toml")


# ------------------------------------------------------------------------------ loading
def _read_file(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        raw = tomllib.loads(path.read_text("utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    for section, table in raw.items():
        if section not in _sections() or not isinstance(table, dict):
            raise ConfigError(f"{path}: unknown section [{section}]")
    return raw


def _error_text(where: str, exc: ValidationError) -> str:
    """One line per problem, named as in the file (section.key) and the environment."""
    return f"{where}: " + "; ".join(problem_lines(exc, hidden={"cloud.url"}))


def _settings(data_dir: Path) -> tuple[Settings, dict[str, Any]]:
    path = Path(data_dir) / "config.toml"
    raw = _read_file(path)
    try:
        return Settings(**raw), raw
    except ValidationError as exc:
        where = f"{path} or the STALELA_* environment" if _env_keys() else str(path)
        raise ConfigError(_error_text(where, exc)) from None


def load_config(data_dir: Path) -> AgentConfig:
    data_dir = Path(data_dir)
    settings, _ = _settings(data_dir)
    values: dict[str, Any] = {}
    for (section, key), attr in ATTRIBUTES.items():
        value = getattr(getattr(settings, section), key)
        values[attr] = tuple(value) if isinstance(value, list) else value
    return AgentConfig(data_dir=data_dir, **values)


def _env_keys() -> dict[tuple[str, str], str]:
    """(section, key) -> the environment variable that sets it."""
    return env_keys(ENV_PREFIX)


def effective(data_dir: Path) -> list[dict[str, Any]]:
    """Every key's effective value and where it came from (default, file or env), for `config check`.

    Raises ConfigError when the configuration is invalid. No value here is a secret: cloud.url is
    shown without any password it may carry.
    """
    settings, raw = _settings(Path(data_dir))
    env = _env_keys()
    rows = []
    for (section, key), attr in ATTRIBUTES.items():
        value = getattr(getattr(settings, section), key)
        if (section, key) in env:
            origin = f"env {env[(section, key)]}"
        elif key in raw.get(section, {}):
            origin = "file"
        else:
            origin = "default"
        if (section, key) == ("cloud", "url"):
            value = _mask_url(value)
        rows.append({"key": f"{section}.{key}", "value": value, "origin": origin, "attribute": attr})
    return rows


_mask_url = mask_url


# ------------------------------------------------------------------------------ writing
def default_toml() -> str:
    """config.toml with every key at its default, each commented from the model."""
    return commented_toml([f"# {Settings.__doc__}"], _sections(), _render)


def write_default_config(data_dir: Path, **overrides: object) -> Path:
    """Write config.toml with every default; `overrides` use `section__key` names (cloud__url=…).

    The overrides are validated first (the environment plays no part): an invalid value raises
    ConfigError and nothing is written.
    """
    wanted: dict[tuple[str, str], object] = {}
    for name, value in overrides.items():
        parts = tuple(name.split("__", 1))
        if len(parts) != 2:
            raise ValueError(f"override {name} must be named section__key")
        wanted[parts] = value  # type: ignore[index]
    missing = [k for k in wanted if k not in ATTRIBUTES]
    if missing:
        raise ValueError(f"unknown config keys: {', '.join('.'.join(k) for k in sorted(missing))}")
    tree: dict[str, dict[str, object]] = {}
    for (section, key), value in wanted.items():
        tree.setdefault(section, {})[key] = list(value) if isinstance(value, tuple) else value
    try:
        _FileOnly(**tree)
    except ValidationError as exc:
        raise ConfigError(_error_text("configuration", exc)) from None
    lines, section = [], ""
    for line in default_toml().splitlines():
        stripped = line.strip()
        if stripped.startswith("[") and stripped.endswith("]"):
            section = stripped[1:-1]
        elif stripped and not stripped.startswith("#") and "=" in stripped:
            key = stripped.split("=")[0].strip()
            if (section, key) in wanted:
                line = f"{key} = {_render(wanted[(section, key)])}"
        lines.append(line)
    path = Path(data_dir) / "config.toml"
    ensure_data_dir(Path(data_dir))
    write_private(path, "\n".join(lines) + "\n", durable=False)
    return path


def set_value(data_dir: Path, section: str, key: str, value: object) -> Path:
    """Set one key in config.toml, keeping the rest of the file (comments, other edits) as it is.

    The result is validated before it replaces the file: an invalid value raises ConfigError and
    the file is unchanged.
    """
    if (section, key) not in ATTRIBUTES:
        raise ValueError(f"unknown config key {section}.{key}")
    path = Path(data_dir) / "config.toml"
    lines = path.read_text("utf-8").splitlines() if path.exists() else []
    new_line, current, done, header = f"{key} = {_render(value)}", "", False, None
    for i, line in enumerate(lines):
        stripped = line.strip()
        if stripped.startswith("[") and stripped.endswith("]"):
            current = stripped[1:-1].strip()
            if current == section:
                header = i
        elif current == section and not stripped.startswith("#") and stripped.split("=")[0].strip() == key:
            lines[i], done = new_line, True
            break
    if not done:
        if header is None:
            lines += ["", f"[{section}]", new_line]
        else:
            lines.insert(header + 1, new_line)
    text = "\n".join(lines) + "\n"
    try:
        tree = tomllib.loads(text)
        _FileOnly(**tree)
    except (tomllib.TOMLDecodeError, ValidationError) as exc:
        detail = _error_text(str(path), exc) if isinstance(exc, ValidationError) else f"{path}: {exc}"
        raise ConfigError(detail) from None
    write_private(path, text, durable=False)
    return path


_render = toml_value


def zone(name: str) -> ZoneInfo:
    return ZoneInfo(name or "Africa/Kinshasa")


# ------------------------------------------------------------------------------ files and modes
def ensure_data_dir(path: Path) -> None:
    """The data folder, 0700 whatever the umask (it holds the journal, the key and the token)."""
    path.mkdir(parents=True, exist_ok=True)
    if stat.S_IMODE(path.stat().st_mode) != 0o700:
        os.chmod(path, 0o700)


def write_private(path: Path, text: str, *, durable: bool = True) -> None:
    """Write a file readable by its owner only (0600, whatever the umask): replaced atomically."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # O_CREAT's mode is masked by the umask; fchmod is not
        os.write(fd, text.encode("utf-8"))
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def write_secret(path: Path, text: str) -> None:
    """Write a secret file readable by the service user only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    write_private(path, text)


def read_secret(path: Path) -> str:
    """A secret file's text, refused when group or others can read it (as the private key is)."""
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        # Worded as fiscal.signing.load_private_key words it for the key: the message is the fix.
        raise PermissionError(f"{path} is readable by others (mode {mode:o}); run: chmod 600 {path}")
    return path.read_text("utf-8").strip()
