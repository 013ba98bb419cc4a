"""The fault switchboard: what the simulated MCF does wrong, settable at start and at run time.

Four kinds of switches:

* shots (``nak``, ``corrupt_bcc``, ``drop``, ``silence``, ``power_loss``): the value is how many
  of the next frames (for ``power_loss``: normalizations) it hits; each hit uses one up;
* levels (``delay_ms``, ``syn_ms``, ``garbage``, ``credit_server_delay_ms``) and flags
  (``memory_nearly_full``, ``memory_full``, ``daily_report_required``, ``clock_not_set``,
  ``dgi_offline``, ``credit_server_down``): stay until cleared, or for the next N frames when set
  with ``clear_after=N`` (``NAME=VALUE:N`` on the command line);
* the link: ``unplug()`` / ``replug()`` (``unplug_ms=500`` unplugs for that long);
* holds (``hold``, ``hold_answer``): the device goes busy (SYN every 100 ms) on one chosen
  command, before running it or after, until ``release()``; each hold is recorded (``held_log``,
  ``wait_held()``) the moment it starts, so a test can act at that exact point of a flow (kill
  the SFE, say) through the device rather than through a hook inside the SFE.

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
HOLDS = ("hold", "hold_answer")
NAMES = SHOTS + LEVELS + FLAGS + LINK + HOLDS
CMD_NORMALIZE = 0x38

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
    "hold": "CMD[#N]: the Nth next CMD (hex; 38 = a normalizing 38h) is held before it runs: "
            "SYN until released (hold=off)",
    "hold_answer": "CMD[#N]: the Nth next CMD runs, its answer is held: SYN until released (hold=off)",
}

_TRUE = {"1", "true", "on", "yes"}
_RELEASE = "off"


@dataclass(frozen=True)
class HoldRule:
    """Hold the ``nth`` next ``cmd`` frame: before it runs, or (``answer``) after, holding its answer."""

    cmd: int
    nth: int = 1
    answer: bool = False

    def label(self) -> str:
        return f"{'hold_answer' if self.answer else 'hold'}={self.cmd:02X}#{self.nth}"


@dataclass(frozen=True)
class Held:
    """A hold that started: which frame, and whether the command had run (its answer is held)."""

    cmd: int
    seq: int
    ran: bool
    at: float  # time.monotonic() when the frame arrived


def parse_hold(name: str, text: str) -> HoldRule:
    """``"31#3"`` -> HoldRule(0x31, 3); the command in hex, the occurrence counted from now."""
    raw_cmd, sep, raw_nth = text.strip().upper().partition("#")
    raw_cmd = raw_cmd.removesuffix("H")
    try:
        cmd = int(raw_cmd, 16)
    except ValueError:
        cmd = -1
    if not 0 <= cmd <= 0xFF or len(raw_cmd) != 2:
        raise ValueError(f"fault {name} takes a command in hex such as 38 or 31#3, not {text!r}")
    if sep and (not raw_nth.isdigit() or int(raw_nth) < 1):
        raise ValueError(f"the occurrence of {name} must be a whole number >= 1, not {raw_nth!r}")
    return HoldRule(cmd, int(raw_nth) if sep else 1, answer=name == "hold_answer")
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
    _hold_rule: HoldRule | None = field(default=None, repr=False)
    _hold_seen: int = field(default=0, repr=False)
    _holding: bool = field(default=False, repr=False)
    _release: bool | None = field(default=None, repr=False)  # True: carry on; False: drop
    _held_event: threading.Event = field(default_factory=threading.Event, repr=False, compare=False)
    _held_log: list[Held] = field(default_factory=list, repr=False, compare=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    # -- setting -----------------------------------------------------------------------------
    def set(self, name: str, value: int | bool | str, clear_after: int | None = None) -> None:
        if name in HOLDS:
            if str(value).strip().lower() == _RELEASE:
                self.release()
            else:
                self.hold(parse_hold(name, str(value)))
            return
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
            self._hold_rule = None
            if self._holding:
                self._release = True

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

    # -- holds -------------------------------------------------------------------------------
    def hold(self, rule: HoldRule) -> None:
        """Arm a hold (replacing one not yet hit); its occurrences are counted from now."""
        with self._lock:
            self._hold_rule, self._hold_seen = rule, 0
            self._held_event.clear()

    def release(self, carry_on: bool = True) -> None:
        """End the hold in progress (or disarm one not hit yet).

        ``carry_on``: the held command runs if it had not, and is answered. Otherwise the frame
        is dropped as if lost on the wire: never run if it had not, never answered."""
        with self._lock:
            if self._holding:
                self._release = carry_on
            else:
                self._hold_rule = None

    @property
    def held_log(self) -> list[Held]:
        """Every hold that started, oldest first."""
        with self._lock:
            return list(self._held_log)

    def is_holding(self) -> bool:
        """A hold has started and has not been released yet."""
        with self._lock:
            return self._holding

    def wait_held(self, timeout: float | None = None) -> Held | None:
        """The hold once it has started (None if it did not within ``timeout`` seconds)."""
        if not self._held_event.wait(timeout):
            return None
        with self._lock:
            return self._held_log[-1]

    def match_hold(self, cmd: int, data: bytes) -> HoldRule | None:
        """Engine side: the rule if this frame is the one to hold (the rule is then used up).
        A 38h only counts when it normalizes: a cancel (38h C) is never held."""
        with self._lock:
            rule = self._hold_rule
            if rule is None or rule.cmd != cmd or (cmd == CMD_NORMALIZE and data[:1] == b"C"):
                return None
            self._hold_seen += 1
            if self._hold_seen < rule.nth:
                return None
            self._hold_rule = None
            return rule

    def holding(self, held: Held) -> None:
        """Engine side: a hold started."""
        with self._lock:
            self._holding, self._release = True, None
            self._held_log.append(held)
        self._held_event.set()

    def take_release(self) -> bool | None:
        """Engine side: None while the hold goes on, else carry on (True) or drop (False)."""
        with self._lock:
            if not self._holding or self._release is None:
                return None
            release, self._holding, self._release = self._release, False, None
            return release

    def hold_ended(self) -> None:
        """Engine side: the hold ended without a release (power cut)."""
        with self._lock:
            self._holding, self._release = False, None

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

    def active(self) -> dict[str, int | bool | str]:
        """The switches that are on, for status displays."""
        with self._lock:
            out: dict[str, int | bool | str] = {
                n: getattr(self, n) for n in SHOTS + LEVELS + FLAGS if getattr(self, n)
            }
        if self.is_unplugged():
            out["unplugged"] = True
        with self._lock:
            if self._hold_rule is not None:
                out["hold"] = self._hold_rule.label()
            if self._holding and self._held_log:
                out["holding"] = f"{self._held_log[-1].cmd:02X}h"
        return out


def parse_assignment(text: str) -> tuple[str, int | bool | str, int | None]:
    """``"nak=3"`` -> ("nak", 3, None); ``"delay_ms=300:2"`` -> ("delay_ms", 300, 2);
    ``"hold=31#3"`` -> ("hold", "31#3", None) (``hold=off`` releases)."""
    name, sep, rest = text.partition("=")
    name = name.strip().lower()
    if not sep:
        raise ValueError(f"fault {text!r} must be NAME=VALUE[:N]")
    if name not in NAMES:
        raise ValueError(f"unknown fault {name!r}; known: {', '.join(NAMES)}")
    if name in HOLDS:
        value = rest.strip()
        if value.lower() != _RELEASE:
            parse_hold(name, value)
        return name, value, None
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
