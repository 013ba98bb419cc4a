"""Frame-level behaviour: NAK, same SEQ+CMD replay, and the fault switchboard."""
from __future__ import annotations

import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drivers.usb_fiscal_memory.framing import (
    NAK,
    SYN,
    Deframer,
    FramingError,
    decode_response,
    encode_command,
)
from simulator.device import DeviceOptions
from simulator.engine import BYTE_TIME_115200, PARTIAL_FRAME_TIMEOUT, MCFEngine
from simulator.faults import FaultSwitchboard, parse_assignment

from sim_helpers import Host


def _c1h(seq: int = 0x21) -> bytes:
    return encode_command(seq, 0xC1, b"")


def test_bad_bcc_gets_nak(engine: MCFEngine) -> None:
    frame = bytearray(_c1h())
    frame[-2] ^= 0x01
    assert engine.receive(bytes(frame)) == bytes((NAK,))
    assert engine.frames_executed == 0


def test_response_bcc_ambiguity_simulator_sends_len_to_amb(engine: MCFEngine) -> None:
    # The driver accepts two readings of a response's BCC; the simulator keeps sending one,
    # the LEN..AMB sum, checked here by hand rather than through the shared helper.
    out = engine.receive(_c1h())
    body = out[1:-5]
    assert body[-1] == 0x05 and body[-8] == 0x04  # ... BRK STA(6) AMB
    total = sum(body) & 0xFFFF
    assert out[-5:-1] == bytes(0x30 + (total >> s & 0xF) for s in (12, 8, 4, 0))
    literal = sum(body[:-7]) & 0xFFFF  # LEN..BRK, the other reading
    assert out[-5:-1] != bytes(0x30 + (literal >> s & 0xF) for s in (12, 8, 4, 0))


def test_line_noise_between_frames_is_ignored(engine: MCFEngine) -> None:
    out = engine.receive(b"\x00\xff\x02garbage" + _c1h() + b"\x7f")
    assert decode_response(out).cmd == 0xC1


def test_a_frame_cut_short_is_naked_after_a_silence(engine: MCFEngine) -> None:
    assert engine.receive(_c1h()[:6]) == b""
    assert engine.poll() == []  # not yet: more bytes may come
    time.sleep(PARTIAL_FRAME_TIMEOUT + 0.05)
    assert [e.data for e in engine.poll()] == [bytes((NAK,))]
    assert decode_response(engine.receive(_c1h())).cmd == 0xC1


def test_same_seq_and_cmd_repeats_the_last_answer_without_executing(host: Host, engine: MCFEngine) -> None:
    host.open_invoice("F1")
    host.item("ARTICLE", "B", "16.00", "100", "100")
    normalize = encode_command(0x70, 0x38, b"100.00,13.79")
    first = engine.receive(normalize)
    executed = engine.frames_executed
    again = engine.receive(normalize)
    assert again == first  # byte for byte
    assert engine.frames_executed == executed
    assert engine.state.tc == 1


def test_replay_of_an_item_does_not_register_it_twice(engine: MCFEngine) -> None:
    host = Host(engine)
    host.open_invoice()
    item = encode_command(0x50, 0x31, "EAU\tBIE,A0.00%380\t380".encode())
    assert engine.receive(item) == engine.receive(item)
    assert host.send(0x33).text.startswith("380.00,")


def test_same_seq_with_another_cmd_is_executed(engine: MCFEngine) -> None:
    engine.receive(encode_command(0x40, 0xC1, b""))
    out = decode_response(engine.receive(encode_command(0x40, 0x2B, b"I0")))
    assert out.data == b"STALELA SIMULATOR SARL"


def test_replay_memory_survives_relinking_but_not_power_loss(engine: MCFEngine) -> None:
    Host(engine).open_invoice("F1")
    cancel = encode_command(0x66, 0x38, b"C")
    first = engine.receive(cancel)
    # A new link object on the same engine: the device still remembers.
    assert engine.receive(cancel) == first
    engine.power_cycle()
    assert decode_response(engine.receive(cancel)).data == b"E:AUCUNE FACTURE OUVERTE"


def test_nak_fault_naks_then_executes(engine: MCFEngine, faults: FaultSwitchboard) -> None:
    faults.set("nak", 2)
    assert engine.receive(_c1h()) == bytes((NAK,))
    assert engine.receive(_c1h()) == bytes((NAK,))
    assert decode_response(engine.receive(_c1h())).cmd == 0xC1
    assert engine.frames_executed == 1


def test_corrupt_bcc_fault_then_a_retry_gets_the_clean_answer(engine: MCFEngine, faults: FaultSwitchboard) -> None:
    faults.set("corrupt_bcc", 1)
    bad = engine.receive(_c1h())
    with pytest.raises(FramingError, match="BCC"):
        decode_response(bad)
    good = engine.receive(_c1h())  # same SEQ: the repeat, now clean
    assert decode_response(good).data == decode_response(bad[:-5] + good[-5:]).data
    assert engine.frames_executed == 1


def test_drop_fault_executes_but_sends_nothing(host: Host, engine: MCFEngine, faults: FaultSwitchboard) -> None:
    host.open_invoice("F1")
    host.item("ARTICLE", "B", "16.00", "100", "100")
    faults.set("drop", 1)
    frame = encode_command(0x77, 0x38, b"100.00,13.79")
    assert engine.receive(frame) == b""
    assert engine.state.tc == 1
    assert decode_response(engine.receive(frame)).data.startswith(b"R:1,1,FV")
    assert engine.state.tc == 1


def test_silence_fault_neither_executes_nor_answers(engine: MCFEngine, faults: FaultSwitchboard) -> None:
    faults.set("silence", 1)
    assert engine.receive(_c1h()) == b""
    assert engine.frames_executed == 0


def test_syn_fault_sends_syn_every_100ms_then_the_answer(engine: MCFEngine, faults: FaultSwitchboard) -> None:
    faults.set("syn_ms", 350, clear_after=1)
    emissions = engine.respond(_c1h())
    assert [e.data for e in emissions[:-1]] == [bytes((SYN,))] * 4
    assert [round(e.at, 3) for e in emissions[:-1]] == [0.0, 0.1, 0.2, 0.3]
    assert emissions[-1].at == pytest.approx(0.35)
    assert decode_response(emissions[-1].data).cmd == 0xC1
    assert [e.data for e in engine.respond(_c1h(0x22))][0][0] == 0x01  # cleared after 1 frame


def test_delay_and_garbage_faults(engine: MCFEngine, faults: FaultSwitchboard) -> None:
    faults.set("delay_ms", 200)
    faults.set("garbage", 16)
    emissions = engine.respond(_c1h())
    junk, frame = emissions
    assert len(junk.data) == 16 and junk.at == pytest.approx(0.2)
    events = Deframer(expect="response").feed(junk.data + frame.data)
    assert [e[0] for e in events] == ["junk", "frame"]


def test_power_loss_after_normalize(host: Host, engine: MCFEngine, faults: FaultSwitchboard) -> None:
    host.open_invoice("F1")
    host.item("ARTICLE", "B", "16.00", "100", "100")
    faults.set("power_loss", 1)
    frame = encode_command(0x78, 0x38, b"100.00,13.79")
    assert engine.receive(frame) == b""  # normalized and persisted, the answer never left
    assert MCFEngine(engine.store.path).state.tc == 1
    # After the reboot the retry is not a repeat: there is no open invoice any more.
    assert decode_response(engine.receive(frame)).data == b"E:AUCUNE FACTURE OUVERTE"
    dfn = host.send(0xC1).text.split(",")[9]
    assert dfn == "F1" and engine.state.tc == 1


def test_wire_timing_adds_byte_times(tmp_path) -> None:  # type: ignore[no-untyped-def]
    engine = MCFEngine(tmp_path / "m.json", options=DeviceOptions(wire_timing=True))
    command = _c1h()
    (answer,) = engine.respond(command)
    expected = (len(command) + len(answer.data)) * BYTE_TIME_115200
    assert answer.at == pytest.approx(expected)


def test_fault_assignments_parse_and_refuse_nonsense() -> None:
    assert parse_assignment("nak=3") == ("nak", 3, None)
    assert parse_assignment("delay_ms=300:2") == ("delay_ms", 300, 2)
    assert parse_assignment("clock_not_set=1") == ("clock_not_set", True, None)
    for bad in ("nak", "bogus=1", "nak=x", "nak=1:2", "delay_ms=5:0", "memory_full=maybe"):
        with pytest.raises(ValueError):
            parse_assignment(bad)


def test_switchboard_unplug_for_a_while(faults: FaultSwitchboard) -> None:
    faults.apply("unplug_ms=100")
    assert faults.is_unplugged()
    assert faults.active() == {"unplugged": True}
    time.sleep(0.15)
    assert not faults.is_unplugged()
    faults.apply("nak=2")
    faults.clear()
    assert faults.active() == {}


COMMANDS = [0xC1, 0xC2, 0x2B, 0xC3, 0xC0, 0x31, 0x33, 0x35, 0x36, 0x38, 0x99]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cmd=st.sampled_from(COMMANDS), data=st.binary(max_size=200), seq=st.integers(0x20, 0xFF))
def test_any_data_gets_a_well_formed_answer(engine: MCFEngine, cmd: int, data: bytes, seq: int) -> None:
    response = decode_response(engine.handle(encode_command(seq, cmd, data)))
    assert (response.seq, response.cmd) == (seq, cmd)
    assert len(response.data) <= 200


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(noise=st.binary(max_size=300))
def test_line_noise_never_breaks_the_device(engine: MCFEngine, noise: bytes) -> None:
    out = engine.receive(noise)
    engine.partial_frame_timeout = 0.0  # the line goes quiet: a half frame is given up
    out += b"".join(e.data for e in engine.poll())
    for event in Deframer(expect="response").feed(out):
        assert event[0] in ("frame", "nak"), event
        if event[0] == "frame":
            decode_response(event[1])
    # Whatever came before, the next clean frame is understood.
    answer = engine.receive(_c1h(0x30)).lstrip(bytes((NAK,)))
    assert decode_response(answer).cmd == 0xC1


# -- holds: the device busy on one chosen frame until released --------------------------------
def _normalize(seq: int = 0x79) -> bytes:
    return encode_command(seq, 0x38, b"100.00,13.79")


def _one_item_open(host: Host) -> None:
    host.open_invoice("F1")
    host.item("ARTICLE", "B", "16.00", "100", "100")


def test_hold_keeps_the_command_unrun_sending_syn_until_released(host: Host, engine: MCFEngine,
                                                                 faults: FaultSwitchboard) -> None:
    _one_item_open(host)
    faults.apply("hold=38")
    assert [e.data for e in engine.respond(_normalize())] == [bytes((SYN,))]
    held = faults.wait_held(timeout=0)
    assert held is not None and (held.cmd, held.seq, held.ran) == (0x38, 0x79, False)
    assert engine.state.tc == 0 and faults.is_holding()
    assert engine.receive(_c1h(0x7A)) == b""  # busy: another frame is not read
    time.sleep(0.15)
    assert [e.data for e in engine.poll()] == [bytes((SYN,))]  # still busy, says so
    faults.release()
    (answer,) = engine.poll()
    assert decode_response(answer.data).data.startswith(b"R:1,1,FV")
    assert engine.state.tc == 1 and not faults.is_holding()


def test_a_dropped_hold_never_runs_and_counts_occurrences(host: Host, engine: MCFEngine,
                                                          faults: FaultSwitchboard) -> None:
    host.open_invoice("F1")
    faults.apply("hold=31#2")
    assert host.item("A", "B", "16.00", "100", "100").text.startswith("100.00,")  # the 1st: answered
    assert engine.respond(encode_command(0x60, 0x31, "B\tBIE,B16.00%50\t50".encode()))[0].data == bytes((SYN,))
    faults.release(carry_on=False)
    assert engine.poll() == []
    assert host.send(0x33).text.startswith("100.00,")  # the 2nd item never registered
    assert engine.device.invoice is not None


def test_hold_answer_runs_the_command_and_a_same_seq_retry_gets_its_answer(
        host: Host, engine: MCFEngine, faults: FaultSwitchboard) -> None:
    _one_item_open(host)
    faults.apply("hold_answer=38")
    assert [e.data for e in engine.respond(_normalize())] == [bytes((SYN,))]
    assert engine.state.tc == 1  # normalized; only the answer is held
    assert faults.wait_held(timeout=0).ran
    faults.release(carry_on=False)
    assert engine.poll() == []
    assert decode_response(engine.receive(_normalize())).data.startswith(b"R:1,1,FV")
    assert engine.state.tc == 1


def test_a_cancel_is_not_a_normalizing_38h_and_clear_releases(host: Host, engine: MCFEngine,
                                                              faults: FaultSwitchboard) -> None:
    host.open_invoice("F1")
    faults.apply("hold=38")
    assert faults.active() == {"hold": "hold=38#1"}
    assert host.send(0x38, "C").text == "E:ANNULEE"  # 38h C passes: answered, not held
    assert engine.device.invoice is None
    _one_item_open(host)
    engine.respond(_normalize())
    assert faults.active() == {"holding": "38h"}
    faults.clear()
    (answer,) = engine.poll()  # clear carries the held command on
    assert decode_response(answer.data).data.startswith(b"R:1,1,FV")


def test_power_cut_ends_a_hold(host: Host, engine: MCFEngine, faults: FaultSwitchboard) -> None:
    faults.apply("hold=C1")
    engine.respond(_c1h())
    engine.power_cycle()
    assert not faults.is_holding()
    assert decode_response(engine.receive(_c1h(0x22))).cmd == 0xC1


def test_hold_assignments_parse_and_refuse_nonsense() -> None:
    assert parse_assignment("hold=31#3") == ("hold", "31#3", None)
    assert parse_assignment("hold_answer=38h") == ("hold_answer", "38h", None)
    assert parse_assignment("hold=off") == ("hold", "off", None)
    for bad in ("hold=xyz", "hold=3", "hold=31#0", "hold=31#x", "hold=38:2", "hold_answer=", "hold=100"):
        with pytest.raises(ValueError):
            parse_assignment(bad)
