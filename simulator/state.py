"""The simulated MCF's fiscal memory, persisted so that a restart continues where it stopped.

Two files beside each other:

* ``state.json``: identity, rates, counters, last invoice, DGI link, clock, secret. Rewritten
  atomically (temp file, fsync, ``os.replace``, fsync of the directory) so a power cut leaves
  the previous or the next version, never a torn one. It is the commit point.
* ``state.json.journal``: the normalized invoices, one JSON line each, append-only. The state
  records how many bytes of it are committed; a line appended by a normalization whose state
  write never happened (power cut in between) is cut off at the next load. Appending keeps a
  normalization O(1) however long the journal grows.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import secrets
import tempfile
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, Iterator
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .amounts import GROUPS

FORMAT = 1
SALE_TYPES = ("FV", "FT", "EV", "ET")
CREDIT_TYPES = ("FA", "EA")
INVOICE_TYPES = SALE_TYPES + CREDIT_TYPES
TAXPAYER_FIELDS = ("I0", "I1", "I2", "I3", "I4")
# FACNO v1.2 (February 2026): C and G went from 8 % to 5 %, O and P are new at 1 %.
DEFAULT_RATES: dict[str, str] = {
    **{g: "0.00" for g in GROUPS},
    "B": "16.00",
    "C": "5.00",
    "F": "16.00",
    "G": "5.00",
    "O": "1.00",
    "P": "1.00",
}
DEFAULT_TAXPAYER: dict[str, str] = {
    "I0": "STALELA SIMULATOR SARL",
    "I1": "BOULEVARD DU 30 JUIN",
    "I2": "KINSHASA",
    "I3": "012345678",
    "I4": "info@stalela.test",
}
DEFAULT_MID = "SIM0000001-1"
DEFAULT_NIF = "A1234567B"
DEFAULT_MAX_RECORDS = 100_000
MID_PATTERN = re.compile(r"^[A-Z0-9]{2,20}-[0-9]{1,4}$")  # NID-ACNT
# A real MCF keeps the outlet's local time (DT has no zone). The DRC has two zones, both
# without daylight saving: Kinshasa (west, UTC+1) and Lubumbashi (east, UTC+2).
DEFAULT_TIME_ZONE = "Africa/Kinshasa"


class StateError(Exception):
    """The fiscal memory file is missing, unreadable or inconsistent."""


def device_zone(name: str) -> ZoneInfo:
    """The IANA zone the device's clock keeps; StateError if ``name`` is not one."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, TypeError) as exc:
        raise StateError(f"time zone {name!r} is not an IANA zone (e.g. {DEFAULT_TIME_ZONE})") from exc


def local_now(zone_name: str) -> datetime:
    """Wall-clock time in ``zone_name``, naive, as the device's DT shows it."""
    return datetime.now(device_zone(zone_name)).replace(tzinfo=None)


@dataclass(frozen=True)
class JournalEntry:
    """One normalized invoice, as the device remembers it."""

    fn: str
    ft: str
    fc: int
    tc: int
    dt: str
    sig: str
    mv: str
    mt: str
    mts: str
    groups: dict[str, list[str]]  # group -> [MV, MT], groups actually used only
    items: int
    payments: list[list[str]]  # [[PA, amount], ...]
    rr: str = ""  # credit notes: nature (COR, RAN, RAM, RRR)
    rn: str = ""  # credit notes: SIG of the original invoice (or "RRR")

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> "JournalEntry":
        return cls(**raw)


@dataclass(frozen=True)
class LastInvoice:
    """What C1h reports as DFDT, DFT, DFS, DFN, DMV."""

    dt: str
    ft: str
    sig: str
    fn: str
    mv: str


@dataclass(frozen=True)
class FiscalState:
    mid: str
    nif: str
    secret: str  # hex; keys the SIG MAC
    taxpayer: dict[str, str]
    rates: dict[str, str]
    counters: dict[str, int]
    max_records: int
    # Seconds added to the wall-clock time in ``time_zone``; None: clock not set.
    clock_offset: float | None
    last_invoice: LastInvoice | None = None
    dgi_sent: int = 0  # EC of C2h
    dgi_last_connection: str = ""  # DT of C2h
    invoices_since_report: int = 0
    last_report_at: str = ""
    journal_count: int = 0
    journal_bytes: int = 0
    time_zone: str = DEFAULT_TIME_ZONE  # where the device is installed: its DT is local there
    format: int = FORMAT

    # -- derived counters (C1h) -------------------------------------------------------------
    @property
    def tc(self) -> int:
        return sum(self.counters.values())

    @property
    def fvc(self) -> int:
        return sum(self.counters[t] for t in SALE_TYPES)

    @property
    def frc(self) -> int:
        return sum(self.counters[t] for t in CREDIT_TYPES)

    def rate(self, group: str) -> Decimal:
        return Decimal(self.rates[group])

    @property
    def secret_bytes(self) -> bytes:
        return bytes.fromhex(self.secret)

    @classmethod
    def new(
        cls,
        *,
        mid: str = DEFAULT_MID,
        nif: str = DEFAULT_NIF,
        taxpayer: dict[str, str] | None = None,
        rates: dict[str, str] | None = None,
        max_records: int = DEFAULT_MAX_RECORDS,
        clock_set: bool = True,
        time_zone: str = DEFAULT_TIME_ZONE,
    ) -> "FiscalState":
        """A freshly provisioned device with a new random secret."""
        if not MID_PATTERN.match(mid):
            raise StateError(f"MID {mid!r} is not NID-ACNT (e.g. SIM0000001-1)")
        if not nif or "," in nif:
            raise StateError(f"NIF {nif!r} is not valid")
        if max_records < 1:
            raise StateError("max_records must be at least 1")
        device_zone(time_zone)
        merged_rates = dict(DEFAULT_RATES)
        merged_rates.update(rates or {})
        return cls(
            mid=mid,
            nif=nif,
            secret=secrets.token_hex(32),
            taxpayer={**DEFAULT_TAXPAYER, **(taxpayer or {})},
            rates={g: f"{Decimal(merged_rates[g]):.2f}" for g in GROUPS},
            counters={t: 0 for t in INVOICE_TYPES},
            max_records=max_records,
            clock_offset=0.0 if clock_set else None,
            # The daily-report clock starts when the device is put into service.
            last_report_at=local_now(time_zone).strftime("%Y%m%d%H%M%S") if clock_set else "",
            time_zone=time_zone,
        )

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> "FiscalState":
        if raw.get("format") != FORMAT:
            raise StateError(f"unknown fiscal memory format {raw.get('format')!r}")
        last = raw.get("last_invoice")
        try:
            state = cls(**{**raw, "last_invoice": LastInvoice(**last) if last else None})
        except TypeError as exc:
            raise StateError(f"fiscal memory has unexpected fields: {exc}") from exc
        if set(state.counters) != set(INVOICE_TYPES) or set(state.rates) != set(GROUPS):
            raise StateError("fiscal memory counters or rates are incomplete")
        device_zone(state.time_zone)
        return state


def atomic_write(path: Path, data: bytes) -> None:
    """Replace ``path`` by ``data`` so that readers see the old or the new bytes, never a mix."""
    directory = path.parent
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    # The rename itself must reach the disk, or a power cut could bring the old name back.
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


@dataclass
class FiscalStore:
    """Reads and writes one device's fiscal memory files."""

    path: Path
    journal_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        self.journal_path = self.path.with_name(self.path.name + ".journal")

    def exists(self) -> bool:
        return self.path.exists()

    def create(self, state: FiscalState) -> FiscalState:
        if self.exists():
            raise StateError(f"{self.path} already exists")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # A journal left by an earlier device at this path is not ours: start empty.
        self.journal_path.write_bytes(b"")
        self.save(state)
        return state

    def load(self) -> FiscalState:
        try:
            raw = json.loads(self.path.read_bytes())
        except FileNotFoundError as exc:
            raise StateError(f"no fiscal memory at {self.path}") from exc
        except (OSError, ValueError) as exc:
            raise StateError(f"cannot read fiscal memory {self.path}: {exc}") from exc
        if not isinstance(raw, dict):
            raise StateError(f"{self.path} is not a fiscal memory file")
        state = FiscalState.from_json(raw)
        self._cut_uncommitted(state)
        self._remove_stale_temps()
        return state

    def save(self, state: FiscalState) -> None:
        data = json.dumps(state.to_json(), indent=1, sort_keys=True).encode("utf-8")
        atomic_write(self.path, data)

    def commit(self, state: FiscalState, entry: JournalEntry) -> FiscalState:
        """Append ``entry`` durably, then publish ``state`` with the journal's new length."""
        line = (json.dumps(dataclasses.asdict(entry), sort_keys=True) + "\n").encode("utf-8")
        with open(self.journal_path, "r+b" if self.journal_path.exists() else "wb") as handle:
            handle.seek(state.journal_bytes)
            handle.truncate()
            handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())
        committed = dataclasses.replace(
            state,
            journal_count=state.journal_count + 1,
            journal_bytes=state.journal_bytes + len(line),
        )
        self.save(committed)
        return committed

    def entries(self, state: FiscalState) -> Iterator[JournalEntry]:
        """The committed journal, oldest first."""
        if state.journal_bytes == 0:
            return
        with open(self.journal_path, "rb") as handle:
            data = handle.read(state.journal_bytes)
        for line in data.splitlines():
            yield JournalEntry.from_json(json.loads(line))

    def _cut_uncommitted(self, state: FiscalState) -> None:
        try:
            size = self.journal_path.stat().st_size
        except FileNotFoundError:
            size = 0
        if size < state.journal_bytes:
            raise StateError(
                f"journal {self.journal_path} is shorter than its committed length "
                f"({size} < {state.journal_bytes} bytes)"
            )
        if size > state.journal_bytes:
            with open(self.journal_path, "r+b") as handle:
                handle.truncate(state.journal_bytes)
                os.fsync(handle.fileno())

    def _remove_stale_temps(self) -> None:
        for stale in self.path.parent.glob(f".{self.path.name}.*.tmp"):
            try:
                stale.unlink()
            except OSError:
                pass
