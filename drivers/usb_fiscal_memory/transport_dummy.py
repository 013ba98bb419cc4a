"""A scripted in-process transport for unit tests of the layers above the wire.

Like python-escpos's Dummy printer: it records every byte written and plays back what the test
scripted, on a fake clock so timeouts and SYN storms cost no real time. It is *not* an MCF; the
simulator is. Use it where a test needs exact control over each reply.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence, TextIO, Union

from .transport import Transport

# One scripted reply to one write: nothing (silence), bytes sent at once, or timed chunks
# [(seconds after the write, bytes), ...].
Reply = Union[None, bytes, Sequence[tuple[float, bytes]]]


@dataclass
class FakeClock:
    """Monotonic time that moves only when the dummy waits."""

    now: float = 0.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += max(0.0, seconds)


@dataclass(order=True)
class _Pending:
    at: float
    order: int
    data: bytes = field(compare=False)


class DummyTransport(Transport):
    """Records writes in ``written``; answers each write with the next scripted ``Reply``.

    ``responder`` (a function of the written bytes) replaces the script when given.
    Writes beyond the script get silence.
    """

    def __init__(
        self,
        script: Sequence[Reply] = (),
        *,
        responder: Callable[[bytes], Reply] | None = None,
        clock: FakeClock | None = None,
        spy: TextIO | None = None,
    ) -> None:
        super().__init__(spy=spy)
        self.clock = clock if clock is not None else FakeClock()
        self.written: list[bytes] = []
        self.opened = 0
        self.closed = 0
        self._script = list(script)
        self._responder = responder
        self._rx: list[_Pending] = []
        self._order = 0

    def inject(self, data: bytes, delay: float = 0.0) -> None:
        """Make ``data`` readable ``delay`` seconds from now, unprompted."""
        self._order += 1
        self._rx.append(_Pending(self.clock.now + delay, self._order, bytes(data)))
        self._rx.sort()

    def _open(self) -> None:
        self.opened += 1

    def _close(self) -> None:
        self.closed += 1

    def _write(self, data: bytes) -> None:
        self.written.append(bytes(data))
        if self._responder is not None:
            reply = self._responder(bytes(data))
        else:
            reply = self._script.pop(0) if self._script else None
        if reply is None:
            return
        if isinstance(reply, (bytes, bytearray)):
            self.inject(bytes(reply))
            return
        for delay, chunk in reply:
            self.inject(chunk, delay)

    def _read(self, max_bytes: int, timeout: float) -> bytes:
        if not self._rx or self._rx[0].at > self.clock.now + timeout:
            self.clock.advance(timeout)
            return b""
        head = self._rx[0]
        self.clock.now = max(self.clock.now, head.at)
        out, rest = head.data[:max_bytes], head.data[max_bytes:]
        if rest:
            head.data = rest
        else:
            self._rx.pop(0)
        return out

    def _reset_input(self) -> None:
        self._rx = [p for p in self._rx if p.at > self.clock.now]
