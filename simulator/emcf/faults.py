"""The e-MCF simulator's fault switchboard: what the DGI's service does wrong, live.

* shots (``error_5xx``, ``r429``, ``lost_submit``, ``lost_confirm``, ``expired_token``,
  ``refuse``): the value is how many of the next requests (for ``lost_confirm``: confirms; for
  ``refuse`` and ``lost_submit``: phase-1 requests) it hits; each hit uses one up;
* levels (``slow_ms``, ``retry_after``, ``confirm_delay_ms``) and ``down`` (``503`` or
  ``drop``): stay until cleared, or for the next N requests when set as ``NAME=VALUE:N``.

Set with ``--fault`` at start, ``POST /_sim/faults`` (one ``NAME=VALUE[:N]`` or ``clear`` per
line) while it runs, or ``stalela sim emcf fault --url URL NAME=VALUE``.
"""
from __future__ import annotations

import threading

SHOTS = ("error_5xx", "r429", "lost_submit", "lost_confirm", "expired_token", "refuse")
LEVELS = ("slow_ms", "retry_after", "confirm_delay_ms")
DOWN = ("down",)
NAMES = SHOTS + LEVELS + DOWN
DOWN_MODES = ("503", "drop", "off")
LEVEL_DEFAULTS = {"slow_ms": 0, "retry_after": 1, "confirm_delay_ms": 0}

HELP: dict[str, str] = {
    "error_5xx": "answer the next N requests with HTTP 500 (nothing done)",
    "r429": "answer the next N requests with 429 Too Many Requests and Retry-After",
    "lost_submit": "the next N phase-1 requests are taken (pending), then the connection drops unanswered",
    "lost_confirm": "the next N confirms are done (normalized), then the connection drops unanswered",
    "expired_token": "answer the next N requests as if their token had expired (401)",
    "refuse": "refuse the next N phase-1 requests permanently (errorCode INVOICE_REFUSED)",
    "slow_ms": "answer every request this many ms late",
    "confirm_delay_ms": "confirms are done (normalized) at once, their answers wait this many ms",
    "retry_after": "seconds the 429 answers ask to wait (Retry-After) [1]",
    "down": "503: answer every request 503; drop: close every connection unanswered; off: up",
}


def parse_assignment(text: str) -> tuple[str, str, int | None]:
    """`NAME=VALUE[:N]` → (name, value, clear_after); ValueError with a clear message."""
    name, sep, rest = text.strip().partition("=")
    if not sep or name not in NAMES:
        raise ValueError(f"unknown fault {name!r}; known: {', '.join(NAMES)}")
    value, _, count = rest.partition(":")
    if name == "down":
        if value not in DOWN_MODES:
            raise ValueError(f"down must be one of {', '.join(DOWN_MODES)}, not {value!r}")
    elif not value.isascii() or not value.isdigit():
        raise ValueError(f"{name} takes a whole number, not {value!r}")
    if count and not (count.isascii() and count.isdigit() and int(count) > 0):
        raise ValueError(f"the count after ':' must be a positive whole number, not {count!r}")
    if count and name in SHOTS:
        raise ValueError(f"{name} is a count already (NAME=N), it takes no ':N'")
    return name, value, int(count) if count else None


class Switchboard:
    """Thread-safe: the HTTP handlers and the control endpoint share it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.shots: dict[str, int] = {name: 0 for name in SHOTS}
        self.levels: dict[str, int] = dict(LEVEL_DEFAULTS)
        self.down = "off"
        self._left: dict[str, int] = {}  # level/down name -> requests left before it clears

    def apply(self, line: str) -> None:
        line = line.strip()
        if line == "clear":
            self.clear()
            return
        name, value, clear_after = parse_assignment(line)
        with self._lock:
            if name in SHOTS:
                self.shots[name] = int(value)
            elif name == "down":
                self.down = value
            else:
                self.levels[name] = int(value)
            if clear_after:
                self._left[name] = clear_after
            else:
                self._left.pop(name, None)

    def clear(self) -> None:
        with self._lock:
            self.shots = {name: 0 for name in SHOTS}
            self.levels = dict(LEVEL_DEFAULTS)
            self.down = "off"
            self._left.clear()

    def take(self, name: str) -> bool:
        """Use up one shot of `name`, if any is left."""
        if not self.shots[name]:
            # None armed (nearly every call): no lock. A shot set at this very moment hits the
            # next request instead, as it would had it been set a moment later.
            return False
        with self._lock:
            if self.shots[name] > 0:
                self.shots[name] -= 1
                return True
            return False

    def request_seen(self) -> tuple[str, int]:
        """(down mode, slow_ms) for this request; counts the request against `NAME=VALUE:N` levels."""
        if not self._left:  # nothing counted down (nearly every call): no lock, nothing to count
            return self.down, self.levels["slow_ms"]
        with self._lock:
            down, slow = self.down, self.levels["slow_ms"]
            for name in list(self._left):
                self._left[name] -= 1
                if self._left[name] <= 0:
                    del self._left[name]
                    if name == "down":
                        self.down = "off"
                    else:
                        self.levels[name] = LEVEL_DEFAULTS[name]
            return down, slow

    def snapshot(self) -> dict:
        with self._lock:
            return {"shots": dict(self.shots), "levels": dict(self.levels), "down": self.down,
                    "clear_after": dict(self._left)}
