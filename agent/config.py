"""Agent configuration: `config.toml` in the data folder, every key with a documented default.

The data folder holds everything the agent owns:

    config.toml          this configuration (no secrets)
    agent.db             the journal (SQLite, WAL)
    enrollment.json      outlet identity and the cloud issuer's public key (public data)
    keys/agent.key       the agent's Ed25519 private key (0600)
    keys/cloud.token     the agent's token for the cloud API (0600)
"""
from __future__ import annotations

import os
import tomllib
from datetime import datetime
from dataclasses import dataclass, field, fields
from pathlib import Path
from zoneinfo import ZoneInfo

DRC_ZONES = ("Africa/Kinshasa", "Africa/Lubumbashi")
SIGNERS = ("device", "cloud", "delegated", "queued")

DEFAULT_TOML = """\
# Stalela Edge agent configuration. Every key is optional; the values shown are the defaults.

[agent]
# The POS API listens on loopback only unless you change this on purpose.
host = "127.0.0.1"
port = 8720
# The outlet's time zone: Africa/Kinshasa (UTC+1) or Africa/Lubumbashi (UTC+2).
# Left empty, the zone recorded for the outlet at enrollment is used.
time_zone = ""
# Identifier of this invoicing system (ISF) printed on receipts; empty = the outlet's ISF.
isf = ""
# Largest request body accepted, in bytes (413 beyond).
max_body_bytes = 1048576

[cloud]
url = "http://127.0.0.1:8710"
# Seconds before a cloud call is given up (the cashier never waits longer than this).
timeout = 2.0

[credential]
# Ask the cloud for this many fiscal numbers per delegated credential.
block_size = 500
# Fetch the next credential when fewer numbers than this are left in the active one...
renew_below_numbers = 100
# ...or when it expires within this many seconds.
renew_before_seconds = 3600
# How often the renewal check runs, in seconds.
check_interval = 30

[sealing]
# Largest number of invoices committed in one transaction (group commit).
max_batch = 64
# Seal delegated invoices in a second process beside the API's, so validation and sealing use
# two cores: "auto" (when the machine has more than one core), "on" or "off". See docs/architecture.md.
process = "auto"
# The sealing process starts when sales overlap and stops after this many seconds without one.
process_idle_seconds = 300

[signer]
# Who seals, in order of preference. "device" is used only when [device] url is set, "cloud"
# only while the cloud answers within cloud_timeout; "delegated" needs a valid credential.
# Add "queued" last to store drafts durably (202) instead of refusing when no signer can seal.
policy = ["device", "cloud", "delegated"]
# Seconds the cloud signer may take before the next signer is tried (the cashier's budget).
cloud_timeout = 1.0
# After a signer fails, skip it for this many seconds (a background probe retries it).
breaker_seconds = 30.0

[device]
# The MCF: a tty path (/dev/ttyACM0), a pyserial URL (socket://host:port), usb:VID:PID, or
# sim:///path/state.json for the bundled simulator. Empty: no device.
url = ""

[reports]
# Local time (HH:MM, outlet's zone) of the automatic Z closing, if nobody ran one that day.
z_time = "23:59"

[sync]
# Sealed invoices uploaded to the cloud per request.
batch_size = 500
# Seconds between outbox checks when it is empty (with +-20 % jitter).
interval = 5.0
# Days a local copy is kept after the cloud acknowledged it.
retention_days = 30
"""


@dataclass(frozen=True)
class AgentConfig:
    data_dir: Path
    host: str = "127.0.0.1"
    port: int = 8720
    time_zone: str = ""
    isf: str = ""
    max_body_bytes: int = 1048576
    cloud_url: str = "http://127.0.0.1:8710"
    cloud_timeout: float = 2.0
    block_size: int = 500
    renew_below_numbers: int = 100
    renew_before_seconds: int = 3600
    check_interval: float = 30.0
    max_batch: int = 64
    sealing_process: str = "auto"
    sealing_process_idle: float = 300.0
    signer_policy: tuple = ("device", "cloud", "delegated")
    signer_cloud_timeout: float = 1.0
    breaker_seconds: float = 30.0
    device_url: str = ""
    reports_z_time: str = "23:59"
    sync_batch_size: int = 500
    sync_interval: float = 5.0
    retention_days: int = 30

    @property
    def sealing_process_enabled(self) -> bool:
        if self.sealing_process == "auto":
            return (os.cpu_count() or 1) > 1
        return self.sealing_process == "on"

    @property
    def db_path(self) -> Path:
        return self.data_dir / "agent.db"

    @property
    def key_path(self) -> Path:
        return self.data_dir / "keys" / "agent.key"

    @property
    def token_path(self) -> Path:
        return self.data_dir / "keys" / "cloud.token"

    @property
    def enrollment_path(self) -> Path:
        return self.data_dir / "enrollment.json"

    @property
    def config_path(self) -> Path:
        return self.data_dir / "config.toml"


class ConfigError(ValueError):
    pass


_SECTIONS = {
    "agent": {"host": "host", "port": "port", "time_zone": "time_zone", "isf": "isf",
              "max_body_bytes": "max_body_bytes"},
    "cloud": {"url": "cloud_url", "timeout": "cloud_timeout"},
    "credential": {"block_size": "block_size", "renew_below_numbers": "renew_below_numbers",
                   "renew_before_seconds": "renew_before_seconds", "check_interval": "check_interval"},
    "sealing": {"max_batch": "max_batch", "process": "sealing_process",
                "process_idle_seconds": "sealing_process_idle"},
    "signer": {"policy": "signer_policy", "cloud_timeout": "signer_cloud_timeout",
               "breaker_seconds": "breaker_seconds"},
    "device": {"url": "device_url"},
    "reports": {"z_time": "reports_z_time"},
    "sync": {"batch_size": "sync_batch_size", "interval": "sync_interval", "retention_days": "retention_days"},
}


def load_config(data_dir: Path) -> AgentConfig:
    data_dir = Path(data_dir)
    path = data_dir / "config.toml"
    values: dict[str, object] = {}
    if path.exists():
        try:
            raw = tomllib.loads(path.read_text("utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: {exc}") from exc
        for section, table in raw.items():
            known = _SECTIONS.get(section)
            if known is None or not isinstance(table, dict):
                raise ConfigError(f"{path}: unknown section [{section}]")
            for key, value in table.items():
                if key not in known:
                    raise ConfigError(f"{path}: unknown key {section}.{key}")
                values[known[key]] = value
    types = {f.name: f.type for f in fields(AgentConfig)}
    for name, value in values.items():
        want = {"str": str, "int": int, "float": (int, float), "tuple": list}[types[name]]
        if not isinstance(value, want) or isinstance(value, bool):
            raise ConfigError(f"{path}: {name} has the wrong type ({type(value).__name__})")
    if "signer_policy" in values:
        policy = tuple(values["signer_policy"])
        unknown = [p for p in policy if p not in SIGNERS]
        if unknown or not policy:
            raise ConfigError(f"{path}: signer.policy takes {', '.join(SIGNERS)}, not {unknown or 'nothing'}")
        values["signer_policy"] = policy
    if "sealing_process" in values and values["sealing_process"] not in ("auto", "on", "off"):
        raise ConfigError(f"{path}: sealing.process takes \"auto\", \"on\" or \"off\", "
                          f"not {values['sealing_process']!r}")
    if "reports_z_time" in values:
        try:
            datetime.strptime(str(values["reports_z_time"]), "%H:%M")
        except ValueError:
            raise ConfigError(f"{path}: reports.z_time must be HH:MM, not {values['reports_z_time']!r}") from None
    config = AgentConfig(data_dir=data_dir, **values)  # type: ignore[arg-type]
    if config.time_zone and config.time_zone not in DRC_ZONES:
        raise ConfigError(f"{path}: time_zone must be one of {', '.join(DRC_ZONES)}")
    return config


def write_default_config(data_dir: Path, **overrides: object) -> Path:
    """Write config.toml with every default; `overrides` use `section__key` names (cloud__url=…)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / "config.toml"
    lines, section, seen = [], "", set()
    wanted = {tuple(k.split("__", 1)): v for k, v in overrides.items()}
    for bad in [k for k in wanted if len(k) != 2]:
        raise ValueError(f"override {'__'.join(bad)} must be named section__key")
    for line in DEFAULT_TOML.splitlines():
        stripped = line.strip()
        if stripped.startswith("[") and stripped.endswith("]"):
            section = stripped[1:-1]
        elif stripped and not stripped.startswith("#") and "=" in stripped:
            key = stripped.split("=")[0].strip()
            if (section, key) in wanted:
                line = f"{key} = {_render(wanted[(section, key)])}"
                seen.add((section, key))
        lines.append(line)
    missing = set(wanted) - seen
    if missing:
        raise ValueError(f"unknown config keys: {', '.join('.'.join(k) for k in sorted(missing))}")
    path.write_text("\n".join(lines) + "\n", "utf-8")
    return path


def _render(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_render(v) for v in value) + "]"
    return str(value)


def zone(name: str) -> ZoneInfo:
    return ZoneInfo(name or "Africa/Kinshasa")


def write_secret(path: Path, text: str) -> None:
    """Write a secret file readable by the service user only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, text.encode("utf-8"))
        os.fsync(fd)
    finally:
        os.close(fd)
