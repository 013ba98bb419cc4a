"""The simulated MCF at the frame level: bytes in, timed bytes out.

``MCFEngine`` cuts the incoming stream into frames (the driver's ``Deframer``), answers NAK to a
frame it cannot read, repeats its last answer to a frame with the same SEQ and CMD as the last
one correctly received (chapter 3.3.2: what makes the SFE's retries safe), runs the fiscal rules
(``device.FiscalDevice``) otherwise, and applies the fault switchboard to what goes back.

Decision: the "last answer" lives in RAM. It survives the link being closed and reopened
(pty, TCP, USB: the engine outlives the link) but not a power cut (``power_cycle()``), after
which the SFE learns the outcome of its last 38h from C1h, as the specification's
exactly-once procedure prescribes.

Every link uses ``respond()``: it returns ``Emission``s stamped with when they leave, relative to
the moment the chunk arrived, so that SYN every 100 ms, delays and 115200-baud wire timing are
computed once here and merely played by the links.

A hold (``faults.hold``, see faults.py) makes the device busy on one frame: it sends SYN every
100 ms from ``poll()`` (which every link calls while idle) and ignores new frames until the hold
is released; then the held command runs (if it had not) and is answered, or is dropped.
"""
from __future__ import annotations

import os
import random
import threading
import time
from dataclasses import dataclass
from math import ceil
from pathlib import Path

from drivers.usb_fiscal_memory.errors import FramingError
from drivers.usb_fiscal_memory.framing import (
    NAK,
    SOH,
    SYN,
    Deframer,
    CommandFrame,
    Status,
    decode_command,
    encode_response,
)

from .device import DeviceOptions, FiscalDevice
from .faults import FaultSwitchboard, Held
from .state import FiscalState, FiscalStore

# 8N1: a start bit, 8 data bits and a stop bit per byte at 115200 baud (86.8 us).
BYTE_TIME_115200 = 10 / 115200
SYN_PERIOD = 0.1  # chapter 3.3.1: SYN every 100 ms until the answer is ready
# A frame cut short (lost bytes) is NAKed after this much silence; the SFE waits >= 500 ms.
PARTIAL_FRAME_TIMEOUT = 0.2
# Junk never contains the bytes that start a frame or mean NAK/SYN, so garbage stays garbage.
_JUNK_BYTES = bytes(b for b in range(256) if b not in (SOH, NAK, SYN))


@dataclass(frozen=True)
class Emission:
    """``data`` leaves the device ``at`` seconds after the chunk that caused it arrived."""

    at: float
    data: bytes


@dataclass
class _Holding:
    """The frame a hold keeps: the command, and its answer when it has already run."""

    command: CommandFrame
    answer: bytes | None
    last_syn: float


@dataclass(frozen=True)
class _LastAnswer:
    seq: int
    cmd: int
    frame: bytes
    final: bool


class MCFEngine:
    """One simulated MCF. Thread-safe: links and tests may call it from several threads."""

    def __init__(
        self,
        state_path: str | os.PathLike[str],
        *,
        options: DeviceOptions | None = None,
        faults: FaultSwitchboard | None = None,
        provision: FiscalState | None = None,
    ) -> None:
        """Open the fiscal memory at ``state_path``, creating it from ``provision`` (or a new
        default device) when the file does not exist yet."""
        self.store = FiscalStore(Path(state_path))
        if not self.store.exists():
            self.store.create(provision or FiscalState.new())
        self.options = options or DeviceOptions()
        self.faults = faults or FaultSwitchboard()
        self._lock = threading.RLock()
        self._random = random.Random()
        self.device = FiscalDevice(self.store, self.options, self.faults)
        self._deframer = Deframer(expect="command")
        self._last: _LastAnswer | None = None
        self._holding: _Holding | None = None
        self._last_rx = time.monotonic()
        self.partial_frame_timeout = PARTIAL_FRAME_TIMEOUT
        self.frames_executed = 0  # commands that ran (not repeats, not NAKs): for tests/stats

    # -- public ------------------------------------------------------------------------------
    @property
    def state(self) -> FiscalState:
        return self.device.state

    def status(self) -> Status:
        with self._lock:
            return self.device.status()

    def handle(self, frame: bytes) -> bytes:
        """Answer one complete raw command frame; the bytes to send (timing ignored)."""
        with self._lock:
            return b"".join(e.data for e in self._answer_frame(bytes(frame)))

    def receive(self, chunk: bytes) -> bytes:
        """Feed raw bytes from the link; the bytes to send back (timing ignored)."""
        return b"".join(e.data for e in self.respond(chunk))

    def respond(self, chunk: bytes) -> list[Emission]:
        """Feed raw bytes from the link; what to send back and when."""
        with self._lock:
            self._last_rx = time.monotonic()
            out: list[Emission] = []
            cursor = 0.0  # when the previous emission finished leaving
            received = 0  # bytes of this chunk already on the wire before the frame's end
            for event in self._deframer.feed(bytes(chunk)):
                # Stray NAK/SYN from the host and line noise are ignored, as on a UART.
                if event[0] != "frame":
                    received += len(event[1]) if event[0] == "junk" else 1
                    continue
                raw = event[1]
                received += len(raw)
                ready = max(self._wire(received), cursor)
                for emission in self._answer_frame(raw):
                    start = max(ready + emission.at, cursor)
                    cursor = start + self._wire(len(emission.data))
                    out.append(Emission(cursor, emission.data))
            return out

    def poll(self) -> list[Emission]:
        """Call when the link is idle: a frame cut short is NAKed after a short silence."""
        with self._lock:
            if self._holding is not None:
                return self._poll_hold()
            if not self._deframer.pending:
                return []
            if time.monotonic() - self._last_rx < self.partial_frame_timeout:
                return []
            pending = self._deframer.pending
            self._deframer.flush()
            return [Emission(0.0, bytes((NAK,)))] if SOH in pending else []

    def power_cycle(self) -> None:
        """Power cut and restart: fiscal memory reloaded from disk, RAM (open invoice, client,
        last answer, half-received bytes) gone."""
        with self._lock:
            self.device.reboot()
            self._last = None
            self._deframer.reset()
            if self._holding is not None:
                self._holding = None
                self.faults.hold_ended()

    # -- internals ---------------------------------------------------------------------------
    def _wire(self, nbytes: int) -> float:
        return nbytes * BYTE_TIME_115200 if self.options.wire_timing else 0.0

    def _answer_frame(self, raw: bytes) -> list[Emission]:
        try:
            return self._answer_frame_once(raw)
        finally:
            self.faults.end_of_frame()

    def _answer_frame_once(self, raw: bytes) -> list[Emission]:
        if self._holding is not None:
            return []  # busy on the held frame: what else arrives is not read
        if self.faults.shot("silence"):
            return []
        if self.faults.shot("nak"):
            return [Emission(0.0, bytes((NAK,)))]
        try:
            command = decode_command(raw)
        except FramingError:
            return [Emission(0.0, bytes((NAK,)))]
        last = self._last
        if last is not None and last.final and (last.seq, last.cmd) == (command.seq, command.cmd):
            return self._transmit(last.frame)
        hold = self.faults.match_hold(command.cmd, command.data)
        if hold is not None and not hold.answer:
            return self._start_hold(command, None)
        frame = self._run(command)
        if frame is None:
            return []
        if hold is not None:
            return self._start_hold(command, frame)
        return self._transmit(frame)

    def _run(self, command: CommandFrame) -> bytes | None:
        """Execute a command; its answer frame (None: the power failed before the answer)."""
        reply = self.device.execute(command.cmd, command.data)
        self.frames_executed += 1
        if reply.power_lost:
            self.power_cycle()
            return None
        frame = encode_response(
            command.seq, command.cmd, reply.data, self.device.status(reply.bit).to_bytes()
        )
        self._last = _LastAnswer(command.seq, command.cmd, frame, reply.final)
        return frame

    def _start_hold(self, command: CommandFrame, answer: bytes | None) -> list[Emission]:
        now = time.monotonic()
        self._holding = _Holding(command, answer, last_syn=now)
        self.faults.holding(Held(command.cmd, command.seq, ran=answer is not None, at=now))
        return [Emission(0.0, bytes((SYN,)))]

    def _poll_hold(self) -> list[Emission]:
        holding = self._holding
        assert holding is not None
        release = self.faults.take_release()
        if release is None:
            now = time.monotonic()
            if now - holding.last_syn < SYN_PERIOD:
                return []
            holding.last_syn = now
            return [Emission(0.0, bytes((SYN,)))]
        self._holding = None
        if not release:
            return []
        frame = holding.answer if holding.answer is not None else self._run(holding.command)
        return self._transmit(frame) if frame is not None else []

    def _transmit(self, frame: bytes) -> list[Emission]:
        """What the line does to an answer: drop, corrupt, SYN first, delay, junk before."""
        if self.faults.shot("drop"):
            return []
        if self.faults.shot("corrupt_bcc"):
            last_digit = frame[-2]
            frame = frame[:-2] + bytes((0x30 + ((last_digit - 0x30 + 1) & 0xF),)) + frame[-1:]
        out: list[Emission] = []
        at = 0.0
        syn_seconds = self.faults.syn_ms / 1000
        if syn_seconds:
            syn_count = ceil(syn_seconds / SYN_PERIOD)
            out += [Emission(k * SYN_PERIOD, bytes((SYN,))) for k in range(syn_count)]
            at = syn_seconds
        at += self.faults.delay_ms / 1000
        if self.faults.garbage:
            junk = bytes(self._random.choice(_JUNK_BYTES) for _ in range(self.faults.garbage))
            out.append(Emission(at, junk))
        out.append(Emission(at, frame))
        return out
