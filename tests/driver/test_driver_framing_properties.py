"""Property-based tests (hypothesis) for framing, the deframer and escaping."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.usb_fiscal_memory.errors import FramingError
from drivers.usb_fiscal_memory.framing import (
    MAX_DATA,
    SOH,
    Deframer,
    decode_command,
    decode_response,
    encode_command,
    encode_response,
    escape_param,
    READING_AMB,
    response_bcc_literal,
    join_fields,
    split_fields,
    unescape_param,
)

seqs = st.integers(0x20, 0xFF)
cmds = st.integers(0x20, 0xFF)
datas = st.binary(max_size=MAX_DATA)
statuses = st.binary(min_size=6, max_size=6)


@given(seqs, cmds, datas)
def test_command_roundtrip_any_data(seq, cmd, data):
    frame = encode_command(seq, cmd, data)
    decoded = decode_command(frame)
    assert (decoded.seq, decoded.cmd, decoded.data) == (seq, cmd, data)


@given(seqs, cmds, datas, statuses)
def test_response_roundtrip_any_data(seq, cmd, data, status):
    decoded = decode_response(encode_response(seq, cmd, data, status))
    assert (decoded.seq, decoded.cmd, decoded.data, decoded.status) == (seq, cmd, data, status)


@given(seqs, cmds, datas, st.data())
def test_any_single_byte_corruption_of_a_command_is_detected(seq, cmd, data, draw):
    frame = bytearray(encode_command(seq, cmd, data))
    index = draw.draw(st.integers(0, len(frame) - 1), label="index")
    new = draw.draw(st.integers(0, 255).filter(lambda b: b != frame[index]), label="byte")
    frame[index] = new
    with pytest.raises(FramingError):
        decode_command(bytes(frame))


@given(seqs, cmds, datas, statuses, st.data())
def test_any_single_byte_corruption_of_a_response_is_detected(seq, cmd, data, status, draw):
    # Checked as a link checks every answer after its device's first: against the device's own
    # reading of the BCC (LEN..AMB here). Both readings together would let some corruptions
    # through (test_driver_protocol.py: ..._the_corruption_both_readings_let_through).
    original = encode_response(seq, cmd, data, status)
    frame = bytearray(original)
    index = draw.draw(st.integers(0, len(frame) - 1), label="index")
    frame[index] = draw.draw(st.integers(0, 255).filter(lambda b: b != frame[index]))
    with pytest.raises(FramingError):
        decode_response(bytes(frame), READING_AMB)


def test_single_bcc_digit_may_turn_one_reading_into_the_other_and_content_is_intact():
    # The one escape allowed above, shown concretely so it is not only hypothetical:
    # STA summing to 3FBh makes LEN..AMB and LEN..BRK differ by exactly 400h (one BCC digit).
    status = bytes([0xFF, 0xFB, 0x81, 0x80, 0x80, 0x80])
    assert sum(status) + 0x05 == 0x400
    original = encode_response(0x20, 0x33, b"", status)
    literal = response_bcc_literal(original[1:-5])
    assert sum(a != b for a, b in zip(original[-5:-1], literal)) == 1
    assert decode_response(original[:-5] + literal + original[-1:]) == decode_response(original)


@given(seqs, cmds, datas, st.data())
def test_deframer_never_yields_a_valid_frame_from_a_corrupted_one(seq, cmd, data, draw):
    frame = bytearray(encode_command(seq, cmd, data))
    index = draw.draw(st.integers(0, len(frame) - 1))
    frame[index] = draw.draw(st.integers(0, 255).filter(lambda b: b != frame[index]))
    d = Deframer("command")
    events = d.feed(bytes(frame)) + d.flush()
    for event in events:
        if event[0] == "frame":
            with pytest.raises(FramingError):
                decode_command(event[1])


frames = st.lists(st.tuples(seqs, cmds, st.binary(max_size=40)), min_size=1, max_size=5)
junk = st.binary(max_size=30).map(lambda b: b.replace(bytes([SOH]), b"").replace(b"\x15", b"").replace(b"\x16", b""))


@settings(max_examples=150)
@given(frames, st.lists(junk, min_size=6, max_size=6), st.data())
def test_deframer_any_chunking_and_junk_yields_same_frames(specs, junks, draw):
    wire = b""
    expected = []
    for i, (seq, cmd, data) in enumerate(specs):
        f = encode_command(seq, cmd, data)
        wire += junks[i % len(junks)] + f
        expected.append(f)
    cuts = sorted(draw.draw(st.lists(st.integers(0, len(wire)), max_size=10)))
    chunks, last = [], 0
    for cut in cuts + [len(wire)]:
        chunks.append(wire[last:cut])
        last = cut
    d = Deframer("command")
    events = []
    for chunk in chunks:
        events += d.feed(chunk)
    assert [e[1] for e in events if e[0] == "frame"] == expected
    assert b"".join(e[1] for e in events if e[0] == "junk") == b"".join(
        junks[i % len(junks)] for i in range(len(specs))
    )
    assert d.pending == b""


@given(st.text())
def test_escape_roundtrip_any_text(text):
    escaped = escape_param(text)
    assert unescape_param(escaped) == text
    assert not any(c in escaped for c in "\r\n,<>&")


@given(st.lists(st.text(), min_size=1, max_size=8))
def test_fields_roundtrip(fields):
    assert split_fields(join_fields(fields)) == fields


@given(st.text(alphabet=st.sampled_from(list("^xad2c;ltgmp5e,&<>\r\nZ")), max_size=30))
def test_escape_roundtrip_caret_heavy_text(text):
    assert unescape_param(escape_param(text)) == text
