"""The MCF's fiscal rules, command by command (DATA in, DATA out; no framing, no timing).

``FiscalDevice.execute(cmd, data)`` answers one command of chapter 4 of the protocol document
and changes the fiscal memory when a rule allows it. What is held in RAM (the open invoice, the
client of C3h) is lost by ``reboot()``, as on a real device at a power cut; what is normalized
is persisted before the answer exists.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Callable, Literal

from drivers.usb_fiscal_memory.errors import FramingError
from drivers.usb_fiscal_memory.framing import (
    MAX_DATA,
    Status,
    escape_param,
    join_fields,
    split_fields,
)

from . import refusals as r
from .amounts import GROUPS, ZERO, Subtotal, fmt2, fmt_payment, parse_decimal
from .faults import FaultSwitchboard
from .invoice import (
    COMMENT_LINES,
    MAX_COMMENT,
    Client,
    InvoiceHeader,
    OpenInvoice,
    parse_item,
    parse_payment,
)
from .refusals import Bit, Refusal, forbidden, syntax
from .sig import compute_sig
from .state import (
    CREDIT_TYPES,
    TAXPAYER_FIELDS,
    FiscalState,
    FiscalStore,
    JournalEntry,
    LastInvoice,
    local_now,
)

DT_FORMAT = "%Y%m%d%H%M%S"
# An MCF whose clock was never set counts from an arbitrary epoch; ours is 2000-01-01.
UNSET_CLOCK_EPOCH = datetime(2000, 1, 1)
LOW_MEMORY_RECORDS = 50  # annex, octet 5 bit 3
CREDIT_WAIT_REASON = "VERIFICATION DE LA FACTURE D'AVOIR AUPRES DU SERVEUR EN COURS"

# Which sales a credit note may refer to: FA to domestic sales, EA to export sales.
_CREDITABLE = {"FA": ("FV", "FT"), "EA": ("EV", "ET")}


@dataclass(frozen=True)
class DeviceOptions:
    """How this simulated device behaves where the document allows more than one reading."""

    answer_style: Literal["table", "example"] = "table"  # 38h success: FN,SIG or SIG,FN
    c0h_fields: Literal[7, 8] = 8  # C0h success: the 8-field examples or the 7-field one
    strict_item_amounts: bool = True  # 31h MON and TS must equal the device's computation
    daily_report_every_invoices: int = 0  # 0: never by count
    daily_report_every_hours: float = 0.0  # 0: never by time
    dgi_restart_seconds: float = 2.0  # how long C2h RESTART shows RES
    wire_timing: bool = False  # emulate 115200 baud 8N1 byte times (used by the engine)

    def __post_init__(self) -> None:
        if self.answer_style not in ("table", "example"):
            raise ValueError("answer_style must be 'table' or 'example'")
        if self.c0h_fields not in (7, 8):
            raise ValueError("c0h_fields must be 7 or 8")


@dataclass(frozen=True)
class Reply:
    data: bytes
    bit: Bit = None
    final: bool = True  # False: a 38h P: answer, re-evaluated when the same SEQ comes again
    power_lost: bool = False  # normalized and persisted, but the answer must never leave


@dataclass
class _Original:
    """A sale invoice that credit notes may refer to."""

    ft: str
    mv: Decimal
    credited: Decimal = ZERO


def fit_fields(fields: list[str], flexible: int, budget: int = MAX_DATA) -> bytes:
    """Join fields; if DATA would pass ``budget`` bytes, shorten field ``flexible``.

    The document lets FN be 64 characters yet caps DATA at 200 bytes, and C1h's answer with a
    long FN does not fit: the device cuts the (escaped) text of one free-text field.
    """
    encoded = [escape_param(f).encode("utf-8") for f in fields]
    excess = sum(len(e) for e in encoded) + len(encoded) - 1 - budget
    if excess > 0:
        kept = encoded[flexible][: max(0, len(encoded[flexible]) - excess)]
        text = kept.decode("utf-8", errors="ignore")  # drop a cut multi-byte character
        caret = text.rfind("^")
        if caret >= 0 and ";" not in text[caret:]:
            text = text[:caret]  # never leave half an escape token
        encoded[flexible] = text.encode("utf-8")
    return b",".join(encoded)


class FiscalDevice:
    def __init__(
        self, store: FiscalStore, options: DeviceOptions, faults: FaultSwitchboard
    ) -> None:
        self.store = store
        self.options = options
        self.faults = faults
        self._handlers: dict[int, Callable[[bytes], Reply]] = {
            0xC1: self._mcf_status,
            0xC2: self._server_link,
            0x2B: self._taxpayer,
            0xC3: self._client_info,
            0xC0: self._open_invoice,
            0x31: self._item,
            0x33: self._subtotal,
            0x35: self._payment,
            0x36: self._comment,
            0x38: self._close_invoice,
        }
        self.reboot()

    # -- life cycle --------------------------------------------------------------------------
    def reboot(self) -> None:
        """Power-up: reload the fiscal memory; everything that lived in RAM is gone."""
        self.state: FiscalState = self.store.load()
        self.invoice: OpenInvoice | None = None
        self.client: Client | None = None
        self._booted = time.monotonic()
        self._dgi_restart_until = 0.0
        self._originals: dict[str, _Original] = {}
        for entry in self.store.entries(self.state):
            self._remember(entry)

    def _remember(self, entry: JournalEntry) -> None:
        if entry.ft in CREDIT_TYPES:
            original = self._originals.get(entry.rn)
            if original is not None:
                original.credited += Decimal(entry.mv)
        else:
            self._originals[entry.sig] = _Original(entry.ft, Decimal(entry.mv))

    # -- clock, memory, status ---------------------------------------------------------------
    def clock_is_set(self) -> bool:
        return self.state.clock_offset is not None and not self.faults.clock_not_set

    def now(self) -> datetime:
        """The device's clock: local time where it is installed (``state.time_zone``), naive.

        Everything the device dates (DT of 38h and C1h, the DGI link, the daily report) reads
        this, never the host's clock, whose zone is the host's business (often UTC).
        """
        if self.clock_is_set():
            offset = timedelta(seconds=self.state.clock_offset or 0.0)
            return local_now(self.state.time_zone) + offset
        return UNSET_CLOCK_EPOCH + timedelta(seconds=time.monotonic() - self._booted)

    def set_clock(self, when: datetime | None = None, *, time_zone: str | None = None) -> None:
        """Set the clock to ``when`` (local time; None: the zone's current time), optionally
        moving the device to another zone first, as a technician would on installation."""
        state = self.state
        if time_zone is not None:
            state = dataclasses.replace(state, time_zone=time_zone)
        reference = local_now(state.time_zone)
        offset = 0.0 if when is None else (when - reference).total_seconds()
        self.state = dataclasses.replace(state, clock_offset=offset)
        self.store.save(self.state)

    def records_left(self) -> int:
        if self.faults.memory_full:
            return 0
        left = max(0, self.state.max_records - self.state.journal_count)
        return min(left, LOW_MEMORY_RECORDS - 1) if self.faults.memory_nearly_full else left

    def daily_report_required(self) -> bool:
        if self.faults.daily_report_required:
            return True
        every = self.options.daily_report_every_invoices
        if every and self.state.invoices_since_report >= every:
            return True
        hours = self.options.daily_report_every_hours
        if hours and self.state.last_report_at:
            since = datetime.strptime(self.state.last_report_at, DT_FORMAT)
            return self.now() - since >= timedelta(hours=hours)
        return False

    def daily_report_done(self) -> None:
        """What a Z report does to the counters the daily-report bit watches."""
        self.state = dataclasses.replace(
            self.state, invoices_since_report=0, last_report_at=self.now().strftime(DT_FORMAT)
        )
        self.store.save(self.state)

    def status(self, bit: Bit = None) -> Status:
        left = self.records_left()
        return Status(
            clock_not_set=not self.clock_is_set(),
            invalid_command=bit == "invalid_command",
            syntax_error=bit == "syntax_error",
            command_forbidden=bit == "command_forbidden",
            memory_write_error=bit == "memory_write_error",
            daily_report_required=self.daily_report_required(),
            invoice_open=self.invoice is not None,
            memory_full=left <= 0,
            memory_low=left < LOW_MEMORY_RECORDS,
        )

    # -- dispatch ----------------------------------------------------------------------------
    def execute(self, cmd: int, data: bytes) -> Reply:
        handler = self._handlers.get(cmd)
        if handler is None:
            return Reply(b"", bit="invalid_command")
        try:
            reply = handler(data)
        except Refusal as refusal:
            return Reply(b"E:" + escape_param(refusal.text).encode("utf-8"), bit=refusal.bit)
        if len(reply.data) > MAX_DATA:
            # Only 33h with many large per-group amounts can get here; a frame cannot carry it.
            return Reply(b"E:" + r.ANSWER_TOO_LONG.encode("ascii"), bit="command_forbidden")
        return reply

    @staticmethod
    def _fields(data: bytes) -> list[str]:
        try:
            return split_fields(data)
        except FramingError:
            raise syntax("DATA n'est pas de l'UTF-8 valide") from None

    def _open(self) -> OpenInvoice:
        if self.invoice is None:
            raise forbidden(r.NO_INVOICE_OPEN)
        return self.invoice

    def _rates(self) -> dict[str, Decimal]:
        return {g: self.state.rate(g) for g in GROUPS}

    # -- C1h ---------------------------------------------------------------------------------
    def _mcf_status(self, data: bytes) -> Reply:
        s = self.state
        last = s.last_invoice or LastInvoice(dt="", ft="", sig="", fn="", mv="0.00")
        fields = [
            s.mid,
            s.nif,
            self.now().strftime(DT_FORMAT),
            str(s.tc),
            str(s.fvc),
            str(s.frc),
            last.dt,
            last.ft,
            last.sig,
            last.fn,
            last.mv,
        ] + [f"{s.rate(g):.2f}" for g in GROUPS]
        return Reply(fit_fields(fields, flexible=9))

    # -- C2h ---------------------------------------------------------------------------------
    def _dgi_link_state(self) -> str:
        if time.monotonic() < self._dgi_restart_until:
            return "RES"
        return "DIS" if self.faults.dgi_offline else "CON"

    def _with_dgi_sync(self, state: FiscalState, dt: str) -> FiscalState:
        """While the server is reachable, every stored invoice is sent at once."""
        if self._dgi_link_state() != "CON":
            return state
        return dataclasses.replace(state, dgi_sent=state.tc, dgi_last_connection=dt)

    def _server_link(self, data: bytes) -> Reply:
        if data == b"RESTART":
            self._dgi_restart_until = time.monotonic() + self.options.dgi_restart_seconds
        elif data:
            raise syntax("C2 accepte aucune donnee ou RESTART")
        synced = self._with_dgi_sync(self.state, self.now().strftime(DT_FORMAT))
        if synced != self.state:
            self.store.save(synced)
            self.state = synced
        link = self._dgi_link_state()
        s = self.state
        # The optional ER is left out: the document's example answers DIS without it.
        return Reply(join_fields([str(s.dgi_sent), str(s.tc), s.dgi_last_connection, link]))

    # -- 2Bh ---------------------------------------------------------------------------------
    def _taxpayer(self, data: bytes) -> Reply:
        option = data.decode("ascii", errors="replace")
        if option not in TAXPAYER_FIELDS:
            raise syntax(f"OPT {option!r} (I0 a I4)")
        return Reply(fit_fields([self.state.taxpayer.get(option, "")], flexible=0))

    # -- C3h ---------------------------------------------------------------------------------
    def _client_info(self, data: bytes) -> Reply:
        if self.invoice is not None:
            raise forbidden(r.CLIENT_WHILE_OPEN)
        self.client = Client.parse(self._fields(data))
        return Reply(b"R")

    # -- C0h ---------------------------------------------------------------------------------
    def _open_invoice(self, data: bytes) -> Reply:
        if self.invoice is not None:
            raise forbidden(r.INVOICE_ALREADY_OPEN)
        if self.client is None:
            raise forbidden(r.CLIENT_MISSING)
        header = InvoiceHeader.parse(self._fields(data))
        if not self.clock_is_set():
            raise forbidden(r.CLOCK_NOT_SET)
        if self.records_left() <= 0:
            raise forbidden(r.MEMORY_FULL)
        if header.nif != self.state.nif:
            raise Refusal(r.NIF_MISMATCH)
        last = self.state.last_invoice
        if last is not None and last.fn == header.fn:
            raise Refusal(r.FN_REUSED)
        self.invoice = OpenInvoice.start(header, self.client, self._rates())
        self.client = None  # C3h must come again before the next invoice
        # The counters this invoice will carry if it is normalized (the examples' reading).
        fields = [str(self.state.counters[header.ft] + 1), str(self.state.tc + 1)]
        client_fields = self.invoice.client.answer_fields()
        if self.options.c0h_fields == 7:
            client_fields = client_fields[:-1]
        return Reply(fit_fields(fields + client_fields, flexible=3))

    # -- 31h ---------------------------------------------------------------------------------
    def _item(self, data: bytes) -> Reply:
        invoice = self._open()
        if invoice.payments:
            raise forbidden(r.ITEMS_AFTER_PAYMENT)
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise syntax("DATA n'est pas de l'UTF-8 valide") from None
        item = parse_item(
            text, self._rates(), invoice.header.ht_mode, self.options.strict_item_amounts
        )
        invoice.add(item)
        a = item.amounts
        return Reply(join_fields([fmt2(a.mv), fmt2(a.mh), fmt2(a.mt), fmt2(a.ts)]))

    # -- 33h ---------------------------------------------------------------------------------
    def _subtotal(self, data: bytes) -> Reply:
        return Reply(join_fields(self._open().totals.subtotal().fields()))

    # -- 35h ---------------------------------------------------------------------------------
    def _payment(self, data: bytes) -> Reply:
        invoice = self._open()
        total = invoice.totals.subtotal().mv
        if invoice.paid >= total:
            raise forbidden(r.ALREADY_PAID)
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise syntax("DATA n'est pas de l'UTF-8 valide") from None
        invoice.payments.append(parse_payment(text, total - invoice.paid))
        return Reply(b"R" + fmt_payment(invoice.paid - total).encode("ascii"))

    # -- 36h ---------------------------------------------------------------------------------
    def _comment(self, data: bytes) -> Reply:
        invoice = self._open()
        fields = self._fields(data)
        if len(fields) > 2 or fields[0] not in tuple(COMMENT_LINES):
            raise syntax("LID (A a H)[,CONTENU]")
        if len(fields) == 1:
            return Reply(fit_fields([invoice.comments.get(fields[0], "")], flexible=0))
        if len(fields[1]) > MAX_COMMENT:
            raise syntax("CONTENU plus long que 255 caracteres")
        invoice.comments[fields[0]] = fields[1]
        return Reply(b"R")

    # -- 38h ---------------------------------------------------------------------------------
    def _close_invoice(self, data: bytes) -> Reply:
        if data == b"C":
            self._open()
            self.invoice = None
            return Reply(b"E:" + r.CANCELLED.encode("ascii"))
        fields = self._fields(data)
        if len(fields) != 2:
            raise syntax("38 attend C ou MV,MT")
        try:
            mv, mt = parse_decimal(fields[0]), parse_decimal(fields[1])
        except ValueError:
            raise syntax("MV,MT") from None
        invoice = self._open()
        if not invoice.items:
            raise forbidden(r.NO_ITEMS)
        subtotal = invoice.totals.subtotal()
        if mv != subtotal.mv or mt != subtotal.mt:
            raise Refusal(r.AMOUNT_INVALID)
        if self.records_left() <= 0:
            raise forbidden(r.MEMORY_FULL)
        if invoice.header.is_credit:
            waiting = self._verify_credit_note(invoice, subtotal.mv)
            if waiting is not None:
                return waiting
        return self._normalize(invoice, subtotal)

    def _verify_credit_note(self, invoice: OpenInvoice, mv: Decimal) -> Reply | None:
        """The DGI server's check, simulated against our own journal; a P: answer if slow."""
        if self.faults.credit_server_down:
            raise Refusal(r.CREDIT_UNVERIFIABLE)
        delay = self.faults.credit_server_delay_ms / 1000
        if delay:
            if invoice.credit_check_started is None:
                invoice.credit_check_started = time.monotonic()
            if time.monotonic() - invoice.credit_check_started < delay:
                s = self.state
                fields = [s.mid, s.nif, invoice.header.fn, fmt2(mv), CREDIT_WAIT_REASON]
                return Reply(b"P:" + fit_fields(fields, 2, MAX_DATA - 2), final=False)
        header = invoice.header
        if header.rr == "RRR" and header.rn == "RRR":
            return None  # a rebate over a period names no single invoice
        original = self._originals.get(header.rn)
        if original is None:
            raise Refusal(r.CREDIT_REFERENCE_UNKNOWN)
        if original.ft not in _CREDITABLE[header.ft]:
            raise Refusal(r.CREDIT_REFERENCE_WRONG_TYPE)
        if original.credited + mv > original.mv:
            raise Refusal(r.CREDIT_EXCEEDS_ORIGINAL)
        return None

    def _normalize(self, invoice: OpenInvoice, subtotal: Subtotal) -> Reply:
        s = self.state
        header = invoice.header
        fc = s.counters[header.ft] + 1
        tc = s.tc + 1
        dt = self.now().strftime(DT_FORMAT)
        groups = {
            g: [fmt2(subtotal.mv_by_group[g]), fmt2(subtotal.mt_by_group[g])]
            for g in GROUPS
            if subtotal.mv_by_group[g] or subtotal.mt_by_group[g]
        }
        mv, mt = fmt2(subtotal.mv), fmt2(subtotal.mt)
        payments = [[method, fmt2(amount)] for method, amount in invoice.payments]
        if invoice.paid < subtotal.mv:  # 35h: what is not paid otherwise is cash
            payments.append(["E", fmt2(subtotal.mv - invoice.paid)])
        sig_fields = [s.mid, s.nif, header.ft, str(fc), str(tc), dt, header.fn, mv, mt]
        sig_fields += [header.rr, header.rn, header.isf, invoice.client.nif]
        sig_fields += [f"{g}={v[0]}/{v[1]}" for g, v in groups.items()]
        sig = compute_sig(s.secret_bytes, sig_fields)
        entry = JournalEntry(
            fn=header.fn,
            ft=header.ft,
            fc=fc,
            tc=tc,
            dt=dt,
            sig=sig,
            mv=mv,
            mt=mt,
            mts=fmt2(subtotal.mts),
            groups=groups,
            items=len(invoice.items),
            payments=payments,
            rr=header.rr,
            rn=header.rn,
        )
        counters = {**s.counters, header.ft: fc}
        updated = dataclasses.replace(
            s,
            counters=counters,
            last_invoice=LastInvoice(dt=dt, ft=header.ft, sig=sig, fn=header.fn, mv=mv),
            invoices_since_report=s.invoices_since_report + 1,
        )
        updated = self._with_dgi_sync(updated, dt)
        try:
            self.state = self.store.commit(updated, entry)
        except OSError:
            raise Refusal(r.MEMORY_WRITE_FAILED, "memory_write_error") from None
        self.invoice = None
        self._remember(entry)
        if self.faults.shot("power_loss"):
            return Reply(b"", power_lost=True)
        common = [str(fc), str(tc), header.ft, dt, s.mid, s.nif]
        if self.options.answer_style == "example":
            return Reply(fit_fields(common + [sig, header.fn], flexible=7))
        return Reply(b"R:" + fit_fields(common + [header.fn, sig], 6, MAX_DATA - 2))
