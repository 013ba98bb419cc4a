"""MCF wire framing (DGI "Protocole MCF-SFE" v1.0, chapters 3 and 4.2, annex). Pure: no I/O.

Command  : SOH LEN SEQ CMD DATA AMB BCC ETX
Response : SOH LEN SEQ CMD DATA BRK STA(6) AMB BCC ETX

Both sides use this module: the driver encodes commands and decodes responses, the simulator
does the reverse. Decisions on the document's ambiguities are in docs/mcf-protocol.md.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .errors import FramingError

SOH = 0x01
ETX = 0x03
BRK = 0x04
AMB = 0x05
NAK = 0x15
SYN = 0x16

MAX_DATA = 200
SEQ_MIN = 0x20
SEQ_MAX = 0xFF
LEN_OFFSET = 0x20
STATUS_SIZE = 6
BCC_SIZE = 4

# Bytes counted by LEN besides DATA: LEN SEQ CMD AMB (command), + BRK STA*6 (response).
_COMMAND_OVERHEAD = 4
_RESPONSE_OVERHEAD = 4 + 1 + STATUS_SIZE
# Whole frame = SOH + counted bytes + BCC + ETX.
_TRAILER = BCC_SIZE + 1


# --------------------------------------------------------------------------------------- BCC
def bcc(body: bytes) -> bytes:
    """Checksum of ``body`` (the bytes LEN..AMB inclusive): 16-bit sum as 4 nibbles + 30h.

    Ambiguity 1: the response table says "positions 2 to 6" (LEN..BRK), where AMB is at 8.
    We always *send* the LEN..AMB sum (Datecs-family behaviour, and what the command table
    means by the same words); ``decode_response`` also *accepts* the literal LEN..BRK sum,
    since a device built to the letter of the table is as likely as one built to its intent.
    """
    total = sum(body) & 0xFFFF
    return bytes(0x30 + ((total >> shift) & 0xF) for shift in (12, 8, 4, 0))


def response_bcc_literal(body: bytes) -> bytes:
    """The other reading of a response's BCC: positions 2 to 6 of the table, LEN..BRK.

    ``body`` is the response's LEN..AMB; the literal span leaves out STA(6) and AMB.
    """
    return bcc(body[: -STATUS_SIZE - 1])


def _check_range(name: str, value: int) -> None:
    if not SEQ_MIN <= value <= SEQ_MAX:
        raise FramingError(f"{name} {value:#x} outside 20h-FFh")


# ---------------------------------------------------------------------------------- frames
@dataclass(frozen=True)
class CommandFrame:
    seq: int
    cmd: int
    data: bytes


@dataclass(frozen=True)
class ResponseFrame:
    seq: int
    cmd: int
    data: bytes
    status: bytes


def _wrap(counted_tail: bytes, seq: int, cmd: int) -> bytes:
    # counted_tail = DATA [BRK STA] AMB; LEN counts itself, SEQ, CMD and that tail.
    length = 3 + len(counted_tail)
    body = bytes((length + LEN_OFFSET, seq, cmd)) + counted_tail
    return bytes((SOH,)) + body + bcc(body) + bytes((ETX,))


def encode_command(seq: int, cmd: int, data: bytes) -> bytes:
    """Build a command frame. DATA bytes are not range-checked: 31h needs TAB and LF."""
    _check_range("SEQ", seq)
    _check_range("CMD", cmd)
    if len(data) > MAX_DATA:
        raise FramingError(f"DATA is {len(data)} bytes, the limit is {MAX_DATA}")
    return _wrap(bytes(data) + bytes((AMB,)), seq, cmd)


def encode_response(seq: int, cmd: int, data: bytes, status: bytes) -> bytes:
    """Build a response frame (the simulator's side)."""
    _check_range("SEQ", seq)
    _check_range("CMD", cmd)
    if len(data) > MAX_DATA:
        raise FramingError(f"DATA is {len(data)} bytes, the limit is {MAX_DATA}")
    if len(status) != STATUS_SIZE:
        raise FramingError(f"STA must be {STATUS_SIZE} bytes, got {len(status)}")
    return _wrap(bytes(data) + bytes((BRK,)) + bytes(status) + bytes((AMB,)), seq, cmd)


# The two readings of a response's BCC (ambiguity 1): over LEN..AMB (what we send), or the
# response table's literal "positions 2 to 6", LEN..BRK.
READING_AMB = "LEN..AMB"
READING_BRK = "LEN..BRK"


def response_reading(frame: bytes) -> str:
    """Which reading of the BCC a valid response frame uses (call after decode_response)."""
    counted = frame[1] - LEN_OFFSET
    body, received = frame[1 : 1 + counted], frame[1 + counted : 1 + counted + BCC_SIZE]
    return READING_AMB if received == bcc(body) else READING_BRK


def _unwrap(frame: bytes, overhead: int, *, response: bool, reading: str | None = None) -> tuple[int, int, bytes]:
    """Check the envelope and BCC; return (seq, cmd, counted bytes between CMD and AMB).

    A command's BCC must be the LEN..AMB sum (the command table is unambiguous); a response's
    may be either reading of ambiguity 1 — or only `reading`, once a link knows which one its
    device uses (with both allowed, a corrupted byte worth exactly STA + AMB can pass as the
    other reading: a device's later frames are checked against its own reading only).
    """
    frame = bytes(frame)
    if len(frame) < 1 + overhead + _TRAILER:
        raise FramingError(f"frame too short ({len(frame)} bytes)")
    if frame[0] != SOH:
        raise FramingError("frame does not start with SOH")
    if frame[-1] != ETX:
        raise FramingError("frame does not end with ETX")
    counted = frame[1] - LEN_OFFSET
    if counted < overhead or counted - overhead > MAX_DATA:
        raise FramingError(f"LEN {frame[1]:#x} out of range")
    if len(frame) != 1 + counted + _TRAILER:
        raise FramingError(f"LEN says {1 + counted + _TRAILER} bytes, frame has {len(frame)}")
    body = frame[1 : 1 + counted]
    if body[-1] != AMB:
        raise FramingError("AMB missing before BCC")
    received = frame[1 + counted : 1 + counted + BCC_SIZE]
    amb_ok = reading in (None, READING_AMB) and received == bcc(body)
    brk_ok = response and reading in (None, READING_BRK) and received == response_bcc_literal(body)
    if not (amb_ok or brk_ok):
        raise FramingError("BCC mismatch")
    seq, cmd = body[1], body[2]
    _check_range("SEQ", seq)
    _check_range("CMD", cmd)
    return seq, cmd, body[3:-1]


def decode_command(frame: bytes) -> CommandFrame:
    seq, cmd, inner = _unwrap(frame, _COMMAND_OVERHEAD, response=False)
    return CommandFrame(seq, cmd, inner)


def decode_response(frame: bytes, reading: str | None = None) -> ResponseFrame:
    """A response frame's parts. `reading`: the device's BCC reading when known (see _unwrap)."""
    seq, cmd, inner = _unwrap(frame, _RESPONSE_OVERHEAD, response=True, reading=reading)
    # inner = DATA BRK STA(6); BRK's place is fixed by LEN, so DATA may itself contain 04h.
    if inner[-STATUS_SIZE - 1] != BRK:
        raise FramingError("BRK missing before STA")
    return ResponseFrame(seq, cmd, inner[: -STATUS_SIZE - 1], inner[-STATUS_SIZE:])


# -------------------------------------------------------------------------------- deframer
Event = tuple  # ("frame", raw) | ("nak",) | ("syn",) | ("junk", raw)
Expect = Literal["command", "response"] | None


class Deframer:
    """Cuts a byte stream into frames and single-byte answers, incrementally.

    Frames are located by LEN, never by scanning for ETX (31h DATA holds TAB/LF and nothing
    in the document forbids 03h in text). A candidate is emitted as ``("frame", raw)`` when its
    envelope is consistent (LEN in range, AMB, BCC digits and ETX where LEN puts them, BRK for
    responses); the BCC itself is checked by ``decode_*`` so the host can resend at once on a
    bad BCC instead of waiting for a timeout. An inconsistent candidate's SOH is reported as
    junk and scanning resumes on the next byte, which is how we resynchronise after garbage.
    """

    def __init__(self, expect: Expect = None) -> None:
        self._expect = expect
        self._min_counted = _RESPONSE_OVERHEAD if expect == "response" else _COMMAND_OVERHEAD
        self._max_counted = MAX_DATA + (
            _COMMAND_OVERHEAD if expect == "command" else _RESPONSE_OVERHEAD
        )
        self._buf = bytearray()

    @property
    def pending(self) -> bytes:
        """Bytes held back, waiting for the rest of a frame."""
        return bytes(self._buf)

    def reset(self) -> None:
        self._buf.clear()

    def feed(self, chunk: bytes) -> list[Event]:
        self._buf += chunk
        return self._scan(final=False)

    def flush(self) -> list[Event]:
        """No more bytes are coming for a partial frame: give up on it and rescan behind it."""
        return self._scan(final=True)

    def _envelope_ok(self, candidate: bytes, counted: int) -> bool:
        if candidate[counted] != AMB or candidate[-1] != ETX:
            return False
        if not all(0x30 <= c <= 0x3F for c in candidate[counted + 1 : counted + 1 + BCC_SIZE]):
            return False
        if self._expect == "response" and candidate[counted - STATUS_SIZE - 1] != BRK:
            return False
        return True

    def _scan(self, final: bool) -> list[Event]:
        events: list[Event] = []
        junk = bytearray()
        buf = self._buf
        i = 0
        while i < len(buf):
            byte = buf[i]
            if byte in (NAK, SYN):
                if junk:
                    events.append(("junk", bytes(junk)))
                    junk.clear()
                events.append(("nak",) if byte == NAK else ("syn",))
                i += 1
                continue
            if byte != SOH:
                junk.append(byte)
                i += 1
                continue
            if i + 1 >= len(buf):
                if final:
                    junk.append(byte)
                    i += 1
                    continue
                break  # need LEN
            counted = buf[i + 1] - LEN_OFFSET
            if not self._min_counted <= counted <= self._max_counted:
                junk.append(byte)
                i += 1
                continue
            total = 1 + counted + _TRAILER
            if i + total > len(buf):
                if final:
                    junk.append(byte)
                    i += 1
                    continue
                break  # wait for the rest
            candidate = bytes(buf[i : i + total])
            if not self._envelope_ok(candidate, counted):
                junk.append(byte)
                i += 1
                continue
            if junk:
                events.append(("junk", bytes(junk)))
                junk.clear()
            events.append(("frame", candidate))
            i += total
        if junk:
            events.append(("junk", bytes(junk)))
        del buf[:i]
        return events


# -------------------------------------------------------------------------------- escaping
# §4.2 as printed (ambiguity 4): \r -> ^xa; and \n -> ^xd; although 0Ah is LF and 0Dh is CR.
_ESCAPES: dict[str, str] = {
    "\r": "^xa;",
    "\n": "^xd;",
    ",": "^x2c;",
    "<": "^lt;",
    ">": "^gt;",
    "&": "^amp;",
}
# Our addition, so that a literal "^" can never be misread: used only when the "^" is followed
# by text that would otherwise decode as one of the tokens (everything else is sent as is).
_CARET_ESCAPE = "^x5e;"
_TOKENS: dict[str, str] = {token: char for char, token in _ESCAPES.items()}
_TOKENS[_CARET_ESCAPE] = "^"
_TAILS = tuple(token[1:] for token in _TOKENS)


def escape_param(s: str) -> str:
    """Replace §4.2's special characters in one parameter.

    A "^" is left literal unless the text after it starts like a token (``xa;``, ``lt;``,
    ``x5e;``...), in which case it becomes ``^x5e;``; this keeps ordinary carets readable on a
    device that only knows §4.2's table, and keeps the round trip lossless for any string.
    """
    out: list[str] = []
    for index, char in enumerate(s):
        if char == "^":
            out.append(_CARET_ESCAPE if s.startswith(_TAILS, index + 1) else "^")
        else:
            out.append(_ESCAPES.get(char, char))
    return "".join(out)


def unescape_param(s: str) -> str:
    """Exact inverse of ``escape_param``; an unknown ``^...`` sequence stays as it is."""
    if "^" not in s:
        return s
    out: list[str] = []
    i = 0
    while i < len(s):
        if s[i] == "^":
            for token, char in _TOKENS.items():
                if s.startswith(token, i):
                    out.append(char)
                    i += len(token)
                    break
            else:
                out.append("^")
                i += 1
        else:
            out.append(s[i])
            i += 1
    return "".join(out)


def join_fields(fields: list[str]) -> bytes:
    """Escape each field, join with commas, encode UTF-8. ``[]`` and ``[""]`` both give b""."""
    return ",".join(escape_param(f) for f in fields).encode("utf-8")


def split_fields(data: bytes) -> list[str]:
    """Inverse of ``join_fields`` (b"" gives ``[""]``, like ``str.split``)."""
    try:
        text = bytes(data).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FramingError(f"DATA is not valid UTF-8: {exc}") from exc
    return [unescape_param(f) for f in text.split(",")]


# ---------------------------------------------------------------------------------- status
_FLAGS: dict[str, tuple[int, int]] = {
    # name: (byte index, bit) -- annex "OCTETS DE STATUT DE MCF" (octet 1 = index 0)
    "syntax_error": (0, 0),
    "invalid_command": (0, 1),
    "clock_not_set": (0, 2),
    "sum_overflow": (1, 0),
    "command_forbidden": (1, 1),
    "memory_reset_detected": (1, 2),
    "daily_report_required": (1, 4),
    "invoice_open": (2, 3),
    "memory_write_error": (4, 0),
    "invalid_record": (4, 2),
    "memory_low": (4, 3),
    "memory_full": (4, 4),
}
_STA_MARK = 0x80  # §3.3.2 gives STA as 80h-FFh: we emit bit 7 set and accept it either way


@dataclass(frozen=True)
class Status:
    """The six STA bytes, decoded. Reserved bits are dropped; octets 4 and 6 kept raw."""

    clock_not_set: bool = False
    invalid_command: bool = False
    syntax_error: bool = False
    daily_report_required: bool = False
    memory_reset_detected: bool = False
    command_forbidden: bool = False
    sum_overflow: bool = False
    invoice_open: bool = False
    memory_full: bool = False
    memory_low: bool = False  # fewer than 50 records left
    invalid_record: bool = False
    memory_write_error: bool = False
    vendor_byte4: int = 0  # octet 4, manufacturer specific (without bit 7)
    vendor_byte6: int = 0  # octet 6, manufacturer specific (without bit 7)

    @classmethod
    def from_bytes(cls, b: bytes) -> "Status":
        if len(b) != STATUS_SIZE:
            raise FramingError(f"STA must be {STATUS_SIZE} bytes, got {len(b)}")
        flags = {name: bool(b[index] >> bit & 1) for name, (index, bit) in _FLAGS.items()}
        return cls(**flags, vendor_byte4=b[3] & 0x7F, vendor_byte6=b[5] & 0x7F)

    def to_bytes(self) -> bytes:
        out = [_STA_MARK] * STATUS_SIZE
        for name, (index, bit) in _FLAGS.items():
            if getattr(self, name):
                out[index] |= 1 << bit
        out[3] |= self.vendor_byte4 & 0x7F
        out[5] |= self.vendor_byte6 & 0x7F
        return bytes(out)

    @property
    def active(self) -> list[str]:
        """Names of the flags that are set, for logs and the technician CLI."""
        return [name for name in _FLAGS if getattr(self, name)]

    @property
    def command_failed(self) -> bool:
        return self.syntax_error or self.invalid_command or self.command_forbidden
