"""Link (SEQ, NAK, SYN, timeouts, same-SEQ retries) against the scripted DummyTransport."""
from __future__ import annotations

import pytest

from drivers.usb_fiscal_memory.errors import LinkTimeout, TooManyRetries
from drivers.usb_fiscal_memory.framing import (
    NAK,
    SYN,
    bcc,
    decode_command,
    encode_command,
    encode_response,
)
from drivers.usb_fiscal_memory.protocol import Link
from drivers.usb_fiscal_memory.transport_dummy import DummyTransport

IDLE = bytes([0x80] * 6)


def answer(seq: int, cmd: int, data: bytes = b"R") -> bytes:
    return encode_response(seq, cmd, data, IDLE)


def make(script, **kw):
    dummy = DummyTransport(script)
    link = Link(dummy, first_seq=kw.pop("first_seq", 0x20), sync=kw.pop("sync", False), clock=dummy.clock, **kw)
    return dummy, link


def test_plain_exchange_and_seq_allocation():
    dummy, link = make([answer(0x20, 0xC3), answer(0x21, 0xC0, b"1,2,,,,,,")])
    assert link.transact(0xC3, b"").data == b"R"
    assert link.transact(0xC0, b"x").data == b"1,2,,,,,,"
    assert dummy.written == [encode_command(0x20, 0xC3, b""), encode_command(0x21, 0xC0, b"x")]


def test_seq_wraps_from_ffh_to_20h():
    dummy, link = make([answer(0xFF, 0xC1), answer(0x20, 0xC1)], first_seq=0xFF)
    link.transact(0xC1)
    link.transact(0xC1)
    assert [decode_command(w).seq for w in dummy.written] == [0xFF, 0x20]


def test_nak_resends_identical_bytes_with_same_seq():
    dummy, link = make([bytes([NAK]), bytes([NAK]), answer(0x20, 0x31, b"1,1,0,0")])
    assert link.transact(0x31, b"Eau\tBIE,A0.00%380\t380").data == b"1,1,0,0"
    expected = encode_command(0x20, 0x31, b"Eau\tBIE,A0.00%380\t380")
    assert dummy.written == [expected, expected, expected]


def test_syn_storm_keeps_waiting_then_succeeds():
    # SYN every 100 ms for 5 s (ten times our 0.5 s timeout), then the answer.
    storm = [(0.1 * i, bytes([SYN])) for i in range(1, 50)] + [(5.0, answer(0x20, 0x38, b"R:x"))]
    dummy, link = make([storm])
    response = link.transact(0x38, b"2500.00,500.00")
    assert response.data == b"R:x"
    assert len(dummy.written) == 1  # never resent while the MCF said it was busy
    assert dummy.clock.now == pytest.approx(5.0)


def test_syn_storm_beyond_busy_limit_raises():
    storm = [(0.1 * i, bytes([SYN])) for i in range(1, 200)]
    dummy, link = make([storm], busy_limit=3.0)
    with pytest.raises(LinkTimeout, match="busy"):
        link.transact(0x38, b"C")
    assert len(dummy.written) == 1


def test_silence_resends_same_seq_then_too_many_retries():
    dummy, link = make([None, None, None, None], retries=3)
    with pytest.raises(TooManyRetries, match="4 attempts"):
        link.transact(0xC1)
    assert dummy.written == [encode_command(0x20, 0xC1, b"")] * 4
    assert dummy.clock.now == pytest.approx(2.0)  # 4 x 0.5 s


def test_silence_then_answer_on_retry():
    dummy, link = make([None, answer(0x20, 0xC1, b"ok")])
    assert link.transact(0xC1).data == b"ok"
    assert dummy.written[0] == dummy.written[1]


def test_bad_bcc_answer_resends_same_seq_at_once():
    bad = bytearray(answer(0x20, 0x33, b"4100.00"))
    bad[5] ^= 0x01
    dummy, link = make([bytes(bad), answer(0x20, 0x33, b"4100.00")])
    assert link.transact(0x33).data == b"4100.00"
    assert dummy.written == [encode_command(0x20, 0x33, b"")] * 2
    assert dummy.clock.now < 0.5  # did not wait for a timeout


def test_wrong_seq_or_cmd_answer_is_discarded():
    stale = answer(0x7F, 0x35, b"R0") + answer(0x20, 0x31, b"wrong cmd")
    dummy, link = make([[(0.0, stale), (0.05, answer(0x20, 0x35, b"R-400"))]])
    assert link.transact(0x35, b"M2000").data == b"R-400"
    assert len(dummy.written) == 1


def test_junk_before_answer_is_skipped():
    dummy, link = make([b"\x00\xff garbage" + answer(0x20, 0xC1, b"x")])
    assert link.transact(0xC1).data == b"x"


def test_answer_split_in_chunks():
    a = answer(0x20, 0xC1, b"x" * 50)
    dummy, link = make([[(0.001 * i, a[i : i + 7]) for i in range(0, len(a), 7)]])
    assert link.transact(0xC1).data == b"x" * 50


def test_explicit_seq_and_replay_reuse_the_frame():
    dummy, link = make([None, None, None, None, answer(0x55, 0x38, b"R:done")], retries=3)
    with pytest.raises(TooManyRetries):
        link.transact(0x38, b"2500.00,500.00", seq=0x55)
    assert link.last_seq == 0x55
    assert link.replay().data == b"R:done"
    assert set(dummy.written) == {encode_command(0x55, 0x38, b"2500.00,500.00")}


def test_sync_sends_one_status_first():
    dummy, link = make([answer(0x30, 0xC1, b"stale?"), answer(0x31, 0xC0, b"1,2,,,,,,")], first_seq=0x30, sync=True)
    assert link.transact(0xC0, b"d").data == b"1,2,,,,,,"
    assert [decode_command(w).cmd for w in dummy.written] == [0xC1, 0xC0]


def test_on_traffic_sees_both_directions():
    seen = []
    dummy, link = make([answer(0x20, 0xC1)], on_traffic=lambda d, b: seen.append((d, b)))
    link.transact(0xC1)
    assert seen[0] == ("tx", encode_command(0x20, 0xC1, b""))
    assert b"".join(b for d, b in seen if d == "rx") == answer(0x20, 0xC1)


def test_timeout_below_document_minimum_refused():
    with pytest.raises(ValueError):
        Link(DummyTransport(), timeout=0.1)


def test_response_bcc_ambiguity_positions_2_to_6_answer_taken_without_resend():
    # Ambiguity 1: an MCF summing LEN..BRK (the response table's letter) is understood at once.
    good = answer(0x20, 0x33, b"4100.00")
    body = good[1:-5]
    literal = good[:1] + body + bcc(body[: -6 - 1]) + good[-1:]
    assert literal != good
    dummy, link = make([literal])
    assert link.transact(0x33).data == b"4100.00"
    assert len(dummy.written) == 1


def test_response_bcc_ambiguity_a_link_holds_its_devices_reading():
    # Both readings are accepted only until the device has answered once: with both allowed on
    # every frame, a byte corrupted by exactly STA + AMB would pass as the other reading.
    from drivers.usb_fiscal_memory.framing import READING_AMB

    first = answer(0x20, 0xC1)
    good = answer(0x21, 0x33, b"4100.00")
    body = good[1:-5]
    other_reading = good[:1] + body + bcc(body[: -6 - 1]) + good[-1:]
    dummy, link = make([first, other_reading, good])
    link.transact(0xC1)
    assert link.bcc_reading == READING_AMB
    assert link.transact(0x33).data == b"4100.00"  # the frame in the other reading was not taken
    assert len(dummy.written) > 2  # it was asked again


def test_response_bcc_ambiguity_the_corruption_both_readings_let_through():
    # Why the link holds one reading: with STA all zero (a normal MCF) STA + AMB = 5, so a data
    # byte raised by 5 turns a LEN..AMB frame into a valid LEN..BRK one with other content.
    from drivers.usb_fiscal_memory.framing import READING_AMB, FramingError, decode_response
    import pytest as _pytest

    frame = bytearray(encode_response(0x20, 0x20, b"\x00", bytes(6)))
    frame[4] = 0x05
    assert decode_response(bytes(frame)).data == b"\x05"  # unknown reading: taken, and wrong
    with _pytest.raises(FramingError):
        decode_response(bytes(frame), READING_AMB)  # the device's reading held: refused
