"""The message exchange of §3.1/§3.3: SEQ allocation, NAK, SYN, timeouts and same-SEQ retries.

Retrying is safe because the MCF does not execute a message whose SEQ and CMD equal those of the
last message it received correctly: it repeats its last answer. So every resend here reuses the
frame's bytes exactly, SEQ included; only a *new* command gets a new SEQ.
"""
from __future__ import annotations

import logging
import random
import time
from types import TracebackType
from typing import Callable

from .errors import FramingError, LinkTimeout, TooManyRetries
from .framing import (SEQ_MAX, SEQ_MIN, Deframer, ResponseFrame, decode_response, encode_command,
                      response_reading)
from .transport import Transport

log = logging.getLogger(__name__)

MIN_TIMEOUT = 0.5  # §3.1: the SFE waits at least 500 ms for an answer
CMD_STATUS = 0xC1
TrafficHook = Callable[[str, bytes], None]  # ("tx" | "rx", bytes)


class Link:
    """One SFE-side conversation with one MCF over a ``Transport``."""

    def __init__(
        self,
        transport: Transport,
        timeout: float = MIN_TIMEOUT,
        retries: int = 3,
        *,
        busy_limit: float = 30.0,
        first_seq: int | None = None,
        sync: bool = True,
        on_traffic: TrafficHook | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``retries`` counts resends after the first attempt (3 -> at most 4 sends).

        ``sync``: before the first real command, send one C1h and drop its answer. After a
        restart we cannot know the SEQ+CMD the MCF saw last; if our first command happened to
        match them the MCF would replay a stale answer instead of executing it. C1h is
        read-only, so whether it is executed or replayed does not matter, and every later
        command carries a SEQ different from it.
        """
        if timeout < MIN_TIMEOUT:
            raise ValueError(f"timeout must be at least {MIN_TIMEOUT} s (§3.1)")
        if retries < 0:
            raise ValueError("retries must be >= 0")
        if first_seq is not None and not SEQ_MIN <= first_seq <= SEQ_MAX:
            raise ValueError("first_seq must be in 20h-FFh")
        self.transport = transport
        self.timeout = timeout
        self.retries = retries
        self.busy_limit = busy_limit
        self.on_traffic = on_traffic
        self._clock = clock
        self._deframer = Deframer(expect="response")
        start = first_seq if first_seq is not None else random.randint(SEQ_MIN, SEQ_MAX)
        self._seq = start - 1 if start > SEQ_MIN else SEQ_MAX  # so the first SEQ is ``start``
        self._needs_sync = sync
        self._last: tuple[int, int, bytes] | None = None
        self.bcc_reading: str | None = None  # the device's reading of the response BCC, once seen

    # -- SEQ ------------------------------------------------------------------------------------
    def _next_seq(self) -> int:
        self._seq = SEQ_MIN if self._seq >= SEQ_MAX else self._seq + 1
        return self._seq

    @property
    def last_seq(self) -> int | None:
        return self._last[0] if self._last else None

    @property
    def last_frame(self) -> bytes | None:
        return self._last[2] if self._last else None

    # -- public API -----------------------------------------------------------------------------
    def transact(self, cmd: int, data: bytes = b"", *, seq: int | None = None) -> ResponseFrame:
        """Send a command and return its answer frame.

        ``seq`` given: reuse that SEQ (a replay after a lost answer; the MCF repeats itself
        only if nothing else reached it since). Raises ``TooManyRetries`` / ``LinkTimeout``.
        """
        if self._needs_sync:
            self._needs_sync = False
            self._send_and_wait(self._next_seq(), CMD_STATUS, b"")
        if seq is None:
            seq = self._next_seq()
        elif not SEQ_MIN <= seq <= SEQ_MAX:
            raise ValueError("seq must be in 20h-FFh")
        return self._send_and_wait(seq, cmd, data)

    def replay(self) -> ResponseFrame:
        """Resend the last command's exact bytes (same SEQ) to get its answer again."""
        if self._last is None:
            raise ValueError("nothing to replay")
        seq, cmd, _ = self._last
        return self._exchange(self._last[2], seq, cmd)

    def close(self) -> None:
        self.transport.close()

    def __enter__(self) -> "Link":
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- exchange -------------------------------------------------------------------------------
    def _send_and_wait(self, seq: int, cmd: int, data: bytes) -> ResponseFrame:
        frame = encode_command(seq, cmd, data)
        self._last = (seq, cmd, frame)
        return self._exchange(frame, seq, cmd)

    def _exchange(self, frame: bytes, seq: int, cmd: int) -> ResponseFrame:
        # Leftovers belong to earlier commands; late answers still in the OS buffer are
        # filtered by SEQ/CMD below.
        self._deframer.reset()
        reasons: list[str] = []
        for attempt in range(self.retries + 1):
            self._write(frame)
            outcome = self._await(seq, cmd)
            if isinstance(outcome, ResponseFrame):
                return outcome
            reasons.append(outcome)
            log.info("MCF %02Xh SEQ %02Xh attempt %d: %s, resending", cmd, seq, attempt + 1, outcome)
        raise TooManyRetries(
            f"no valid answer to {cmd:02X}h (SEQ {seq:02X}h) after {len(reasons)} attempts: "
            + ", ".join(reasons)
        )

    def _write(self, frame: bytes) -> None:
        if self.on_traffic:
            self.on_traffic("tx", frame)
        self.transport.write(frame)

    def _await(self, seq: int, cmd: int) -> ResponseFrame | str:
        """The answer, or why to resend: "nak", "bad frame: ...", "timeout"."""
        now = self._clock()
        deadline = now + self.timeout
        busy_until = now + self.busy_limit
        while True:
            remaining = deadline - self._clock()
            if remaining <= 0:
                # A frame may be stuck behind a corrupted LEN; give it a last look.
                verdict = self._judge(self._deframer.flush(), seq, cmd)
                return verdict if verdict is not None else "timeout"
            chunk = self.transport.read(512, remaining)
            if not chunk:
                continue
            if self.on_traffic:
                self.on_traffic("rx", chunk)
            events = self._deframer.feed(chunk)
            if any(ev[0] == "syn" for ev in events):
                now = self._clock()
                if now >= busy_until:
                    raise LinkTimeout(
                        f"MCF busy (SYN) for more than {self.busy_limit:g} s on {cmd:02X}h"
                    )
                # §3.3.1: SYN every 100 ms while busy; each one restarts our wait.
                deadline = min(now + self.timeout, busy_until)
            verdict = self._judge(events, seq, cmd)
            if verdict is not None:
                return verdict

    def _judge(self, events: list[tuple], seq: int, cmd: int) -> ResponseFrame | str | None:
        for event in events:
            kind = event[0]
            if kind == "nak":
                return "nak"
            if kind == "junk":
                log.debug("MCF junk bytes ignored: %s", event[1].hex(" "))
            elif kind == "frame":
                try:
                    response = decode_response(event[1], self.bcc_reading)
                except FramingError as exc:
                    return f"bad frame: {exc}"
                if self.bcc_reading is None:
                    # A device uses one reading of the BCC: learnt from its first valid answer,
                    # held for the link's life (accepting both on every frame would let a
                    # corrupted byte worth exactly STA + AMB pass as the other reading).
                    self.bcc_reading = response_reading(event[1])
                if response.seq == seq and response.cmd == cmd:
                    return response
                log.info(
                    "MCF answer for SEQ %02Xh CMD %02Xh discarded (waiting for %02Xh/%02Xh)",
                    response.seq, response.cmd, seq, cmd,
                )
        return None
