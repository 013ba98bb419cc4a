"""Raw-frame helpers for the simulator tests (a module, not conftest, so tests can import it)."""
from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from drivers.usb_fiscal_memory.framing import (
    SEQ_MAX,
    SEQ_MIN,
    Status,
    decode_response,
    encode_command,
)
from drivers.usb_fiscal_memory.client import InvoiceDraft, Payment
from drivers.usb_fiscal_memory.commands import AddItem, ClientInfo, OpenInvoice
from simulator.engine import MCFEngine

NIF = "A1234567B"


@dataclass(frozen=True)
class Answer:
    text: str
    status: Status
    raw: bytes


class Host:
    """An SFE that speaks raw frames to an engine, one SEQ per command."""

    def __init__(self, engine: MCFEngine) -> None:
        self.engine = engine
        self.seq = SEQ_MIN - 1

    def next_seq(self) -> int:
        self.seq = SEQ_MIN if self.seq >= SEQ_MAX else self.seq + 1
        return self.seq

    def send(self, cmd: int, data: bytes | str = b"", seq: int | None = None) -> Answer:
        payload = data.encode("utf-8") if isinstance(data, str) else data
        raw = self.engine.receive(encode_command(seq or self.next_seq(), cmd, payload))
        frame = decode_response(raw)
        return Answer(frame.data.decode("utf-8"), Status.from_bytes(frame.status), raw)

    # -- the invoice flow, spelled with the document's DATA ----------------------------------
    def open_invoice(self, fn: str = "FAC01/2026", kind: str = "FV", mode: str = "TTC") -> Answer:
        assert self.send(0xC3).text == "R"
        return self.send(0xC0, f"1123,Jan,{NIF},{kind},{mode},SFEABC001,{fn}")

    def open_credit_note(self, ref: str, fn: str = "AV01/2026", kind: str = "FA", nature: str = "COR") -> Answer:
        assert self.send(0xC3).text == "R"
        return self.send(0xC0, f"1123,Jan,{NIF},{kind},{nature},{ref},TTC,SFEABC001,{fn}")

    def item(self, name: str, group: str, rate: str, mon: str, price: str) -> Answer:
        return self.send(0x31, f"{name}\tBIE,{group}{rate}%{mon}\t{price}")

    def dgi_example_items(self) -> None:
        """The invoice of the document's chapter 2: 5 x water 720 exempt, milk 464 at B."""
        assert self.item("EAU", "A", "0.00", "3600", "720*5").text == "3600.00,3600.00,0.00,0.00"
        assert self.item("LAIT GR", "B", "16.00", "464", "464").text == "464.00,400.00,64.00,0.00"

    def sell(self, fn: str, price: str = "2400", kind: str = "FV") -> list[str]:
        """A whole one-item sale at B 16 % TTC; the 38h answer's fields (after R:)."""
        opened = self.open_invoice(fn, kind)
        assert not opened.text.startswith("E:"), opened.text
        line = self.item("ARTICLE", "B", "16.00", price, price).text.split(",")
        closed = self.send(0x38, f"{line[0]},{line[2]}")
        assert closed.text.startswith("R:"), closed.text
        return closed.text[2:].split(",")


def dgi_example(fn: str = "345/2024") -> InvoiceDraft:
    """Chapter 2's invoice: 5 x water 720 exempt (A), milk 464 TTC at B; 4064 TTC, VAT 64."""
    return InvoiceDraft(
        opening=OpenInvoice(
            opid="JACQUES", opn="Jacques", nif=NIF, invoice_type="FV", pmode="TTC",
            isf="AB01710090", fn=fn,
        ),
        client=ClientInfo("PM", "A9001255A", "ABC SARL"),
        items=(
            AddItem("EAU", "BIE", "A", Decimal("0"), Decimal("3600"), Decimal("720"), Decimal("5")),
            AddItem("LAIT GR", "BIE", "B", Decimal("16"), Decimal("464"), Decimal("464")),
        ),
        comments=(("A", "Merci, a bientot"),),
        payments=(Payment("M", Decimal("4000")), Payment()),
    )
