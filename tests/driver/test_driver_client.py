"""MCFClient: the §4.3 invoice flow, its refusals, P: waits and crash recovery.

The device here is a *scripted* responder (per command code, a queue of answers), enough to
pin the order and bytes the client sends; the real simulator's end-to-end tests live elsewhere.
"""
from __future__ import annotations

from collections import defaultdict
from decimal import Decimal as D

import pytest

from drivers.usb_fiscal_memory.client import (
    DeviceNotReady,
    InvoiceDraft,
    MCFClient,
    NormalizationPending,
    Payment,
    SubtotalMismatch,
    Totals,
)
from drivers.usb_fiscal_memory.commands import AddItem, ClientInfo, NormalizedInvoice, OpenInvoice
from drivers.usb_fiscal_memory.errors import DeviceError
from drivers.usb_fiscal_memory.framing import Status, decode_command, encode_response
from drivers.usb_fiscal_memory.protocol import Link
from drivers.usb_fiscal_memory.transport_dummy import DummyTransport

RATES = ",".join(["0.00", "16.00"] + ["0.00"] * 14)


def c1h(dfn: str = "FAC04/2025", dfs: str = "QWERTYUIOPLKJHGFDSAZXCVB", dft: str = "FV") -> bytes:
    return (
        f"AB01000001-1,A1234567B,20250301100320,49,46,3,20250301100305,{dft},{dfs},{dfn},"
        f"13000.00,{RATES}"
    ).encode()


SUB_33H = b"4064.00,3600.00,464.00," + b",".join([b"0"] * 14) + b",0,64.00," + b",".join([b"0"] * 14) + b",0,0"
R38 = b"R:3,9,FV,20241204123456,XX01710090-1,A9000011T,345/2024,HQBAX2F3K22NMDYRTESTFACT"


class ScriptedMcf:
    """Answers by command code from per-code queues (last answer repeats)."""

    def __init__(self, answers: dict[int, list[bytes]], status: dict[int, Status] | None = None):
        self.answers = {k: list(v) for k, v in answers.items()}
        self.status = status or {}
        self.commands: list[tuple[int, int, bytes]] = []
        self.counts: dict[int, int] = defaultdict(int)

    def __call__(self, raw: bytes) -> bytes:
        frame = decode_command(raw)
        self.commands.append((frame.seq, frame.cmd, frame.data))
        queue = self.answers.get(frame.cmd, [b"R"])
        data = queue.pop(0) if len(queue) > 1 else queue[0]
        sta = self.status.get(frame.cmd, Status())
        return encode_response(frame.seq, frame.cmd, data, sta.to_bytes())

    @property
    def codes(self) -> list[int]:
        return [c for _, c, _ in self.commands]


def client_for(mcf: ScriptedMcf, **kw) -> MCFClient:
    dummy = DummyTransport(responder=mcf)
    link = Link(dummy, first_seq=0x20, sync=False, clock=dummy.clock)
    return MCFClient(link, sleep=dummy.clock.advance, clock=dummy.clock, **kw)


def draft(**kw) -> InvoiceDraft:
    base = dict(
        opening=OpenInvoice("7", "JACQUES", "A9000011T", "FV", "TTC", "AB01710090", "345/2024"),
        items=(
            AddItem("EAU", "BIE", "A", D("0"), D("3600"), D("720"), quantity=D("5")),
            AddItem("LAIT GR", "BIE", "B", D("16"), D("464"), D("464")),
        ),
        client=ClientInfo("PP"),
        comments=(("A", "Merci"),),
        payments=(Payment("E", D("4064")),),
    )
    base.update(kw)
    return InvoiceDraft(**base)


def happy_mcf(over: dict[int, list[bytes]] | None = None) -> ScriptedMcf:
    answers = {
        0xC1: [c1h()],
        0xC3: [b"R"],
        0xC0: [b"3,9,,,,,,"],
        0x31: [b"3600.00,3600.00,0.00,0.00", b"464.00,400.00,64.00,0.00"],
        0x36: [b"R"],
        0x33: [SUB_33H],
        0x35: [b"R0"],
        0x38: [R38],
    }
    answers.update(over or {})
    return ScriptedMcf(answers)


def test_seal_invoice_follows_the_document_flow():
    mcf = happy_mcf()
    steps: list[str] = []
    client = client_for(mcf, on_step=steps.append)
    checked = []

    def cross_check(sub):
        checked.append(sub)
        return Totals(D("4064.00"), D("64.00"))

    result = client.seal_invoice(draft(), cross_check)
    assert mcf.codes == [0xC1, 0xC3, 0xC0, 0x31, 0x31, 0x36, 0x33, 0x35, 0x38]
    data = {c: d for _, c, d in mcf.commands}
    assert data[0xC3] == b"PP,,,,,,"
    assert data[0xC0] == b"7,JACQUES,A9000011T,FV,TTC,AB01710090,345/2024"
    assert data[0x35] == b"E4064"
    assert data[0x38] == b"4064.00,64.00"
    assert checked[0].mt == D("64.00")
    assert result == NormalizedInvoice(
        3, 9, "FV", "20241204123456", "XX01710090-1", "A9000011T", "345/2024", "HQBAX2F3K22NMDYRTESTFACT"
    )
    assert result.qr_payload == "RDCDEF01;XX01710090-1;HQBAX2F3K22NMDYRTESTFACT;A9000011T;20241204123456"
    assert steps == [
        "status", "client", "open", "item:1", "item:2", "comment:A", "subtotal", "cross_check",
        "payment:1", "normalizing", "normalized",
    ]
    seqs = [s for s, _, _ in mcf.commands]
    assert len(set(seqs)) == len(seqs)  # every new command a new SEQ


@pytest.mark.parametrize("flag", ["memory_full", "clock_not_set", "daily_report_required"])
def test_refuses_when_status_forbids(flag):
    mcf = happy_mcf()
    mcf.status[0xC1] = Status(**{flag: True})
    with pytest.raises(DeviceNotReady):
        client_for(mcf).seal_invoice(draft())
    assert mcf.codes == [0xC1]


def test_open_invoice_left_over_is_cancelled_first():
    mcf = happy_mcf({0x38: [b"E:ANNULEE", R38]})
    mcf.status[0xC1] = Status(invoice_open=True)
    client = client_for(mcf)
    client.seal_invoice(draft())
    assert mcf.codes[:3] == [0xC1, 0x38, 0xC3]
    assert mcf.commands[1][2] == b"C"
    assert any("cancelled" in w for w in client.warnings)


def test_subtotal_mismatch_cancels_and_names_both_amounts():
    mcf = happy_mcf({0x38: [b"E:ANNULEE"]})
    with pytest.raises(SubtotalMismatch) as info:
        client_for(mcf).seal_invoice(draft(), lambda sub: Totals(D("4100.00"), D("64.00")))
    assert "4064.00" in str(info.value) and "4100.00" in str(info.value)
    assert info.value.device == Totals(D("4064.00"), D("64.00"))
    assert mcf.codes[-1] == 0x38 and mcf.commands[-1][2] == b"C"
    assert 0x35 not in mcf.codes


def test_device_error_mid_invoice_cancels_then_raises():
    mcf = happy_mcf({0x31: [b"E:Groupe de taxation invalide"], 0x38: [b"E:ANNULEE"]})
    with pytest.raises(DeviceError, match="Groupe de taxation invalide") as info:
        client_for(mcf).seal_invoice(draft())
    assert info.value.cmd == 0x31
    assert mcf.codes == [0xC1, 0xC3, 0xC0, 0x31, 0x38]


def test_pending_is_asked_again_with_a_new_seq():
    pending = b"P:XX01710090-1,A9000011T,345/2024,4064.00,serveur DGI"
    mcf = happy_mcf({0x38: [pending, pending, R38]})
    result = client_for(mcf).seal_invoice(draft())
    assert result.sig == "HQBAX2F3K22NMDYRTESTFACT"
    sent_38 = [(s, d) for s, c, d in mcf.commands if c == 0x38]
    assert len(sent_38) == 3
    assert len({s for s, _ in sent_38}) == 3 and {d for _, d in sent_38} == {b"4064.00,64.00"}


def test_pending_beyond_the_bound_raises():
    pending = b"P:XX01710090-1,A9000011T,345/2024,4064.00,serveur DGI"
    mcf = happy_mcf({0x38: [pending]})
    client = client_for(mcf, pending_timeout=2.0, pending_interval=0.5)
    with pytest.raises(NormalizationPending):
        client.seal_invoice(draft())
    assert mcf.codes.count(0x38) in (4, 5, 6)


def test_recover_last_returns_the_devices_result_for_our_fn():
    mcf = ScriptedMcf({0xC1: [c1h(dfn="345/2024", dfs="HQBAX2F3K22NMDYRTESTFACT")]})
    got = client_for(mcf).recover_last("345/2024")
    assert got == NormalizedInvoice(
        46, 49, "FV", "20250301100305", "AB01000001-1", "A1234567B", "345/2024", "HQBAX2F3K22NMDYRTESTFACT"
    )
    assert client_for(mcf).recover_last("346/2024") is None


def test_recover_credit_note_uses_frc():
    mcf = ScriptedMcf({0xC1: [c1h(dfn="AV1", dft="FA")]})
    assert client_for(mcf).recover_last("AV1").fc == 3


def test_seal_is_exactly_once_when_the_device_already_has_it():
    mcf = happy_mcf({0xC1: [c1h(dfn="345/2024")]})
    result = client_for(mcf).seal_invoice(draft())
    assert result.fn == "345/2024"
    assert mcf.codes == [0xC1]


def test_one_method_per_command():
    mcf = ScriptedMcf({
        0xC1: [c1h()],
        0xC2: [b"49,49,20250301100118,DIS"],
        0x2B: [b"Restaurant ABC", b"Bd 30 Juin", b"Kinshasa", b"012345678", b"info@test.cd"],
        0x36: [b"Merci"],
        0x35: [b"R-400"],
    })
    client = client_for(mcf)
    assert client.status().nif == "A1234567B"
    assert client.server_link().sta == "DIS"
    assert client.taxpayer() == {
        "I0": "Restaurant ABC", "I1": "Bd 30 Juin", "I2": "Kinshasa", "I3": "012345678", "I4": "info@test.cd",
    }
    assert client.read_comment("A") == "Merci"
    assert client.pay("M", D("2000")).due == D("400")
    assert client.last_status == Status()
