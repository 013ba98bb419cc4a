"""The fault switchboard: what the simulated MCF does wrong, settable at start and at run time.

Three kinds of switches:

* shots (``nak``, ``corrupt_bcc``, ``drop``, ``silence``, ``power_loss``): the value is how many
  of the next frames (for ``power_loss``: normalizations) it hits; each hit uses one up;
* levels (``delay_ms``, ``syn_ms``, ``garbage``, ``credit_server_delay_ms``) and flags
  (``memory_nearly_full``, ``memory_full``, ``daily_report_required``, ``clock_not_set``,
  ``dgi_offline``, ``credit_server_down``): stay until cleared, or for the next N frames when set
  with ``clear_after=N`` (``NAME=VALUE:N`` on the command line);
* the link: ``unplug()`` / ``replug()`` (``unplug_ms=500`` unplugs for that long).

Thread-safe: the CLI, a test and the link thread may touch it at the same time.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field, fields

SHOTS = ("nak", "corrupt_bcc", "drop", "silence", "power_loss")
LEVELS = ("delay_ms", "syn_ms", "garbage", "credit_server_delay_ms")
FLAGS = (
    "memory_nearly_full",
    "memory_full",
    "daily_report_required",
    "clock_not_set",
    "dgi_offline",
    "credit_server_down",
)
LINK = ("unplug_ms", "unplug")
NAMES = SHOTS + LEVELS + FLAGS + LINK

HELP: dict[str, str] = {
    "nak": "answer NAK to the next N frames (not executed)",
    "corrupt_bcc": "executed, but the next N answers carry a wrong BCC",
    "drop": "executed, but the next N answers are never sent",
    "silence": "the next N frames are ignored: no execution, no answer",
    "power_loss": "the next N normalizations are persisted, then power fails before the answer",
    "delay_ms": "answer this many ms late (no SYN)",
    "syn_ms": "send SYN every 100 ms for this many ms before answering",
    "garbage": "send this many junk bytes before each answer",
    "credit_server_delay_ms": "credit notes answer P: until the server has taken this long",
    "memory_nearly_full": "report fewer than 50 records left",
    "memory_full": "report memory full and refuse new invoices",
    "daily_report_required": "report that the daily report must be made",
    "clock_not_set": "report the clock as not set and refuse new invoices",
    "dgi_offline": "the DGI server is unreachable (C2h DIS, nothing sent)",
    "credit_server_down": "credit notes cannot be verified (38h error)",
    "unplug_ms": "unplug the link for this many ms, then replug",
    "unplug": "1: unplug the link until replugged; 0: replug",
}

_TRUE = {"1", "true", "on", "yes"}
_FALSE = {"0", "false", "off", "no"}


@dataclass
class FaultSwitchboard:
    nak: int = 0
    corrupt_bcc: int = 0
    drop: int = 0
    silence: int = 0
    power_loss: int = 0
    delay_ms: int = 0
    syn_ms: int = 0
    garbage: int = 0
    credit_server_delay_ms: int = 0
    memory_nearly_full: bool = False
    memory_full: bool = False
    daily_report_required: bool = False
    clock_not_set: bool = False
    dgi_offline: bool = False
    credit_server_down: bool = False
    _clear_after: dict[str, int] = field(default_factory=dict, repr=False)
    _unplugged_until: float | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    # -- setting -----------------------------------------------------------------------------
    def set(self, name: str, value: int | bool, clear_after: int | None = None) -> None:
        if name == "unplug":
            self.unplug() if value else self.replug()
            return
        if name == "unplug_ms":
            self.unplug(for_seconds=int(value) / 1000) if value else self.replug()
            return
        if name not in SHOTS + LEVELS + FLAGS:
            raise ValueError(f"unknown fault {name!r}; known: {', '.join(NAMES)}")
        if not isinstance(value, bool) and int(value) < 0:
            raise ValueError(f"fault {name} cannot be negative")
        with self._lock:
            setattr(self, name, bool(value) if name in FLAGS else int(value))
            if clear_after is not None and name not in SHOTS:
                self._clear_after[name] = clear_after
            else:
                self._clear_after.pop(name, None)

    def apply(self, assignment: str) -> None:
        """Set one fault from ``NAME=VALUE`` or ``NAME=VALUE:N`` (N: clear after N frames)."""
        self.set(*parse_assignment(assignment))

    def clear(self) -> None:
        with self._lock:
            for f in fields(self):
                if not f.name.startswith("_"):
                    setattr(self, f.name, f.default)
            self._clear_after.clear()
            self._unplugged_until = None

    # -- using (engine side) -----------------------------------------------------------------
    def shot(self, name: str) -> bool:
        """True if this frame is hit by the shot fault ``name``; uses one shot up."""
        with self._lock:
            left = getattr(self, name)
            if left > 0:
                setattr(self, name, left - 1)
                return True
            return False

    def end_of_frame(self) -> None:
        """Count one answered frame against every ``clear_after``."""
        with self._lock:
            for name in list(self._clear_after):
                self._clear_after[name] -= 1
                if self._clear_after[name] <= 0:
                    del self._clear_after[name]
                    default = next(f.default for f in fields(self) if f.name == name)
                    setattr(self, name, default)

    # -- the link ----------------------------------------------------------------------------
    def unplug(self, for_seconds: float | None = None) -> None:
        with self._lock:
            self._unplugged_until = (
                float("inf") if for_seconds is None else time.monotonic() + for_seconds
            )

    def replug(self) -> None:
        with self._lock:
            self._unplugged_until = None

    def is_unplugged(self) -> bool:
        with self._lock:
            if self._unplugged_until is None:
                return False
            if time.monotonic() >= self._unplugged_until:
                self._unplugged_until = None
                return False
            return True

    def active(self) -> dict[str, int | bool]:
        """The switches that are on, for status displays."""
        with self._lock:
            out: dict[str, int | bool] = {
                n: getattr(self, n) for n in SHOTS + LEVELS + FLAGS if getattr(self, n)
            }
        if self.is_unplugged():
            out["unplugged"] = True
        return out


def parse_assignment(text: str) -> tuple[str, int | bool, int | None]:
    """``"nak=3"`` -> ("nak", 3, None); ``"delay_ms=300:2"`` -> ("delay_ms", 300, 2)."""
    name, sep, rest = text.partition("=")
    name = name.strip().lower()
    if not sep:
        raise ValueError(f"fault {text!r} must be NAME=VALUE[:N]")
    if name not in NAMES:
        raise ValueError(f"unknown fault {name!r}; known: {', '.join(NAMES)}")
    raw_value, _, raw_after = rest.partition(":")
    raw_value = raw_value.strip().lower()
    value: int | bool
    if name in FLAGS:
        if raw_value not in _TRUE | _FALSE:
            raise ValueError(f"fault {name} takes 1 or 0, not {raw_value!r}")
        value = raw_value in _TRUE
    else:
        if not raw_value.isdigit():
            raise ValueError(f"fault {name} takes a whole number, not {raw_value!r}")
        value = int(raw_value)
    clear_after = None
    if raw_after:
        if not raw_after.strip().isdigit() or int(raw_after) < 1:
            raise ValueError(f"the clear-after count of {name} must be a whole number >= 1")
        if name in SHOTS + LINK:
            raise ValueError(f"{name} is already a count; it takes no :N")
        clear_after = int(raw_after)
    return name, value, clear_after
