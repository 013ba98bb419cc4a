"""Framing: byte-exact frames, BCC, markers, status bits, deframer behaviour."""
from __future__ import annotations

import pytest

from drivers.usb_fiscal_memory.errors import FramingError, MCFLinkError
from drivers.usb_fiscal_memory.framing import (
    AMB,
    BRK,
    ETX,
    MAX_DATA,
    NAK,
    SOH,
    SYN,
    CommandFrame,
    Deframer,
    ResponseFrame,
    Status,
    bcc,
    decode_command,
    decode_response,
    encode_command,
    encode_response,
    escape_param,
    join_fields,
    split_fields,
    unescape_param,
)

IDLE = bytes([0x80] * 6)


def test_bcc_document_example_12ABh():
    # §3.2: 12ABh is sent as 31h 32h 3Ah 3Bh.
    body = bytes([0xFF] * 18) + bytes([0x12AB - 0xFF * 18])
    assert sum(body) == 0x12AB
    assert bcc(body) == b"12:;" == bytes([0x31, 0x32, 0x3A, 0x3B])


def test_bcc_wraps_at_16_bits():
    body = bytes([0xFF] * 300)  # 12AD4h: only the low 16 bits (2AD4h) are sent
    assert bcc(body) == b"2:=4"


def test_c1h_command_frame_byte_exact():
    # LEN = 4 bytes (LEN SEQ CMD AMB) + 20h; BCC = 24h+20h+C1h+05h = 10Ah.
    assert encode_command(0x20, 0xC1, b"") == bytes(
        [SOH, 0x24, 0x20, 0xC1, AMB, 0x30, 0x31, 0x30, 0x3A, ETX]
    )


def test_command_with_data_byte_exact():
    frame = encode_command(0x2A, 0x2B, b"I0")
    body = bytes([0x26, 0x2A, 0x2B]) + b"I0" + bytes([AMB])
    total = sum(body)
    assert frame == bytes([SOH]) + body + bcc(body) + bytes([ETX])
    assert total == 0x26 + 0x2A + 0x2B + 0x49 + 0x30 + 0x05
    assert decode_command(frame) == CommandFrame(0x2A, 0x2B, b"I0")


def test_response_frame_bcc_covers_len_to_amb_including_sta():
    # Ambiguity 1: the sum runs LEN..AMB for responses too (not "positions 2 to 6").
    status = bytes([0x80, 0x80, 0x88, 0x80, 0x80, 0x80])
    frame = encode_response(0x21, 0x35, b"R0", status)
    body = bytes([0x20 + 2 + 11, 0x21, 0x35]) + b"R0" + bytes([BRK]) + status + bytes([AMB])
    assert frame == bytes([SOH]) + body + bcc(body) + bytes([ETX])
    assert decode_response(frame) == ResponseFrame(0x21, 0x35, b"R0", status)


# Ambiguity 1, byte for byte: SEQ 21h, CMD 35h, DATA "R0", STA 80h x6. LEN = 20h + 13.
#   LEN..BRK (positions 2 to 6, the table's letter): 2Dh+21h+35h+52h+30h+04h      = 0109h
#   LEN..AMB (what we send; the table's intent):     0109h + 6 x 80h + 05h         = 040Eh
_R0_BODY = bytes([0x2D, 0x21, 0x35, 0x52, 0x30, BRK] + [0x80] * 6 + [AMB])
R0_WITH_LEN_TO_AMB_BCC = bytes([SOH]) + _R0_BODY + bytes([0x30, 0x34, 0x30, 0x3E, ETX])
R0_WITH_LEN_TO_BRK_BCC = bytes([SOH]) + _R0_BODY + bytes([0x30, 0x31, 0x30, 0x39, ETX])
R0 = ResponseFrame(0x21, 0x35, b"R0", IDLE)


def test_response_bcc_ambiguity_we_send_len_to_amb():
    assert encode_response(0x21, 0x35, b"R0", IDLE) == R0_WITH_LEN_TO_AMB_BCC


def test_response_bcc_ambiguity_len_to_amb_reading_accepted():
    assert decode_response(R0_WITH_LEN_TO_AMB_BCC) == R0


def test_response_bcc_ambiguity_positions_2_to_6_reading_accepted():
    # A device that sums only LEN..BRK, as the response table literally says, is understood.
    assert decode_response(R0_WITH_LEN_TO_BRK_BCC) == R0


@pytest.mark.parametrize(
    "digits",
    [
        bytes([0x30, 0x31, 0x30, 0x35]),  # LEN..DATA (0105h): neither reading
        bytes([0x30, 0x34, 0x30, 0x3F]),  # LEN..AMB + 1
        bytes([0x30, 0x31, 0x30, 0x3A]),  # LEN..BRK + 1
        bytes([0x30, 0x30, 0x30, 0x30]),
    ],
)
def test_response_bcc_ambiguity_bcc_matching_neither_reading_rejected(digits):
    frame = bytes([SOH]) + _R0_BODY + digits + bytes([ETX])
    with pytest.raises(FramingError, match="BCC mismatch"):
        decode_response(frame)


def test_command_bcc_has_one_reading_only():
    # The command table's "positions 2 to 6" is LEN..AMB exactly: no second reading there.
    frame = encode_command(0x21, 0x35, b"R0")
    body = frame[1:-5]
    short = bytes([SOH]) + body + bcc(body[:-1]) + bytes([ETX])  # LEN..DATA
    with pytest.raises(FramingError, match="BCC mismatch"):
        decode_command(short)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda f: bytes([0x02]) + f[1:], "SOH"),
        (lambda f: f[:-1] + b"\x04", "ETX"),
        (lambda f: f[:1] + bytes([f[1] + 1]) + f[2:], "LEN"),
        (lambda f: f[:3] + bytes([f[3] ^ 1]) + f[4:], "BCC"),
        (lambda f: f[:-6] + b"\x06" + f[-5:], "AMB"),
        (lambda f: f[:-2], "ETX|LEN"),
    ],
)
def test_decode_command_rejects_damage(mutate, message):
    frame = encode_command(0x30, 0x31, b"Eau\tBIE,A0.00%380\t380")
    with pytest.raises(FramingError, match=message):
        decode_command(mutate(frame))


def test_framing_error_is_a_link_error():
    assert issubclass(FramingError, MCFLinkError)


def test_decode_response_requires_brk():
    frame = bytearray(encode_response(0x30, 0xC1, b"abc", IDLE))
    frame[4 + 3] = 0x07  # BRK -> something else, then fix BCC so only BRK is wrong
    counted = frame[1] - 0x20
    frame[1 + counted : 1 + counted + 4] = bcc(bytes(frame[1 : 1 + counted]))
    with pytest.raises(FramingError, match="BRK"):
        decode_response(bytes(frame))


@pytest.mark.parametrize("seq", [0x00, 0x1F])
def test_seq_below_20h_refused(seq):
    with pytest.raises(FramingError):
        encode_command(seq, 0xC1, b"")


def test_data_size_limit():
    encode_command(0x20, 0x31, b"x" * MAX_DATA)
    with pytest.raises(FramingError, match="200"):
        encode_command(0x20, 0x31, b"x" * (MAX_DATA + 1))


# ---------------------------------------------------------------------------- status
def test_status_flags_map_to_annex_bits():
    raw = bytes([0x80 | 0b111, 0x80 | 0b10111, 0x80 | 0b1000, 0x80 | 0x11, 0x80 | 0b11101, 0xA2])
    s = Status.from_bytes(raw)
    assert s.syntax_error and s.invalid_command and s.clock_not_set
    assert s.sum_overflow and s.command_forbidden and s.memory_reset_detected
    assert s.daily_report_required
    assert s.invoice_open
    assert s.memory_write_error and s.invalid_record and s.memory_low and s.memory_full
    assert s.vendor_byte4 == 0x11 and s.vendor_byte6 == 0x22
    assert s.to_bytes() == raw


def test_status_accepts_bytes_without_bit7_and_emits_it():
    s = Status.from_bytes(bytes([0x00, 0x00, 0x08, 0x00, 0x10, 0x00]))
    assert s.invoice_open and s.memory_full and not s.memory_low
    assert s.to_bytes() == bytes([0x80, 0x80, 0x88, 0x80, 0x90, 0x80])
    assert Status().to_bytes() == IDLE
    assert s.active == ["invoice_open", "memory_full"]


def test_status_reserved_bits_ignored():
    s = Status.from_bytes(bytes([0xF8, 0xE8, 0xF7, 0x80, 0xE2, 0x80]))
    assert s == Status()


# -------------------------------------------------------------------------- deframer
def test_deframer_events_in_order():
    r = encode_response(0x20, 0xC1, b"x", IDLE)
    d = Deframer("response")
    assert d.feed(b"\x15\x16" + r + b"\x16") == [("nak",), ("syn",), ("frame", r), ("syn",)]


def test_deframer_resyncs_after_junk_with_false_soh():
    r = encode_response(0x20, 0xC1, b"x", IDLE)
    junk = b"\xff\x01\x22zz"  # an SOH whose LEN is impossible
    d = Deframer("response")
    events = d.feed(junk + r)
    assert events == [("junk", junk), ("frame", r)]


def test_deframer_waits_for_split_frame():
    c = encode_command(0x21, 0x31, b"Eau\tBIE,A0.00%380\t380")
    d = Deframer("command")
    assert d.feed(c[:1]) == []
    assert d.feed(c[1:7]) == []
    assert d.pending == c[:7]
    assert d.feed(c[7:]) == [("frame", c)]
    assert d.pending == b""


def test_deframer_emits_bad_bcc_frame_for_decoder_to_reject():
    r = bytearray(encode_response(0x20, 0xC1, b"xyz", IDLE))
    r[4] ^= 0x01
    events = Deframer("response").feed(bytes(r))
    assert events == [("frame", bytes(r))]
    with pytest.raises(FramingError, match="BCC"):
        decode_response(events[0][1])


def test_deframer_flush_recovers_frame_hidden_behind_corrupt_len():
    good = encode_response(0x22, 0xC1, b"ok", IDLE)
    broken = bytes([SOH, 0xF0]) + b"abc"  # promises 200+ bytes that never come
    d = Deframer("response")
    assert d.feed(broken + good) == []
    events = d.flush()
    assert ("frame", good) in events
    assert events[0][0] == "junk"


def test_deframer_data_may_contain_control_bytes():
    data = bytes([SOH, ETX, NAK, SYN, AMB, BRK, 0x09, 0x0A])
    c = encode_command(0x20, 0x31, data)
    assert Deframer("command").feed(c) == [("frame", c)]
    assert decode_command(c).data == data


# -------------------------------------------------------------------------- escaping
def test_escape_table_as_printed():
    # Ambiguity 4: the table maps \r to ^xa; and \n to ^xd; (swapped vs ASCII); we follow it.
    assert escape_param("\r") == "^xa;"
    assert escape_param("\n") == "^xd;"
    assert escape_param("a,b<c>d&e") == "a^x2c;b^lt;c^gt;d^amp;e"


def test_caret_literal_unless_it_looks_like_a_token():
    assert escape_param("x^2") == "x^2"
    assert escape_param("^lt;") == "^x5e;lt;"
    assert unescape_param("^x5e;lt;") == "^lt;"
    assert unescape_param("^unknown;") == "^unknown;"


def test_join_and_split_fields():
    data = join_fields(["PM", "ABC, SARL", "Rue <1> & co"])
    assert data == b"PM,ABC^x2c; SARL,Rue ^lt;1^gt; ^amp; co"
    assert split_fields(data) == ["PM", "ABC, SARL", "Rue <1> & co"]
    assert split_fields(b"") == [""]
    assert join_fields([]) == b""


def test_split_fields_rejects_invalid_utf8():
    with pytest.raises(FramingError, match="UTF-8"):
        split_fields(b"\xff\xfe")
