"""MCF client: one method per command, the whole-invoice flow of §4.3, and crash recovery."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Callable, Protocol, TypeVar

from .commands import (
    CREDIT_TYPES,
    AddItem,
    AddPayment,
    Cancelled,
    CancelInvoice,
    ClientInfo,
    Comment,
    InvoiceOpened,
    ItemRegistered,
    McfStatus,
    Normalize,
    NormalizedInvoice,
    OpenInvoice,
    PaymentRegistered,
    Pending,
    ReadServerLink,
    ReadStatus,
    ReadTaxpayerInfo,
    Request,
    RestartAccepted,
    ServerLinkStatus,
    SetClient,
    Subtotal,
    SubtotalResult,
    TAXPAYER_FIELDS,
)
from .errors import DeviceError, MCFLinkError
from .framing import Status
from .protocol import Link

log = logging.getLogger(__name__)
R = TypeVar("R")

__all__ = [
    "MCFClient",
    "InvoiceDraft",
    "Payment",
    "Totals",
    "StepHook",
    "NormalizedInvoice",
    "SubtotalMismatch",
    "DeviceNotReady",
    "NormalizationPending",
]


class StepHook(Protocol):
    def __call__(self, step: str) -> None: ...


class DeviceNotReady(DeviceError):
    """C1h status forbids a new invoice (memory full, clock not set, daily report due)."""


class NormalizationPending(DeviceError):
    """38h kept answering ``P:`` beyond the allowed wait; the invoice is still open."""

    def __init__(self, pending: Pending, status: Status | None = None) -> None:
        super().__init__(0x38, f"still pending: {pending.reason}", status)
        self.pending = pending


class SubtotalMismatch(Exception):
    """The MCF's 33h totals differ from the SFE's own; the invoice was cancelled on the MCF."""

    def __init__(self, device: "Totals", agent: "Totals") -> None:
        super().__init__(
            f"MCF subtotal MV={device.mv} MT={device.mt} differs from ours MV={agent.mv} MT={agent.mt}"
        )
        self.device = device
        self.agent = agent


@dataclass(frozen=True)
class Totals:
    mv: Decimal  # total TTC
    mt: Decimal  # total VAT


@dataclass(frozen=True)
class Payment:
    method: str | None = None  # E V C M D A; None = cash for the rest
    amount: Decimal | None = None  # None = the rest


@dataclass(frozen=True)
class InvoiceDraft:
    """Everything ``seal_invoice`` sends, in §4.3 order."""

    opening: OpenInvoice
    items: tuple[AddItem, ...]
    client: ClientInfo | None = None
    comments: tuple[tuple[str, str], ...] = ()  # (line A-H, text)
    payments: tuple[Payment, ...] = field(default_factory=tuple)


CrossCheck = Callable[[SubtotalResult], Totals]


def _no_step(step: str) -> None:
    """Default hook: nothing to observe."""


class MCFClient:
    """Typed access to one MCF. Device refusals are raised as ``DeviceError`` here."""

    def __init__(
        self,
        link: Link,
        *,
        on_step: StepHook | None = None,
        pending_timeout: float = 60.0,
        pending_interval: float = 0.5,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.link = link
        self.on_step: StepHook = on_step or _no_step
        self.pending_timeout = pending_timeout
        self.pending_interval = pending_interval
        self._sleep = sleep
        self._clock = clock
        self.last_status: Status | None = None  # STA of the latest answer
        self.last_opened: InvoiceOpened | None = None  # C0h answer of the latest seal_invoice
        self.warnings: list[str] = []  # things the last seal_invoice had to fix on the way

    # -- plumbing -------------------------------------------------------------------------------
    def execute(self, request: Request[R]) -> R:
        """Send one typed request; return its typed answer or raise the device's error."""
        frame = self.link.transact(request.CMD, request.data())
        status = Status.from_bytes(frame.status)
        self.last_status = status
        result = request.parse(frame.data, status)
        if isinstance(result, DeviceError):
            raise result
        return result

    # -- one method per command -----------------------------------------------------------------
    def status(self) -> McfStatus:
        return self.execute(ReadStatus())

    def server_link(self) -> ServerLinkStatus:
        result = self.execute(ReadServerLink())
        if not isinstance(result, ServerLinkStatus):
            raise DeviceError(0xC2, f"unexpected C2h answer {result!r}", self.last_status)
        return result

    def restart_server_link(self) -> ServerLinkStatus | RestartAccepted:
        return self.execute(ReadServerLink(restart=True))

    def taxpayer_info(self, opt: str) -> str:
        return self.execute(ReadTaxpayerInfo(opt))

    def taxpayer(self) -> dict[str, str]:
        """I0-I4 in one go."""
        return {opt: self.taxpayer_info(opt) for opt in TAXPAYER_FIELDS}

    def set_client(self, client: ClientInfo | None = None) -> None:
        self.execute(SetClient(client))

    def open_invoice(self, request: OpenInvoice) -> InvoiceOpened:
        return self.execute(request)

    def add_item(self, item: AddItem) -> ItemRegistered:
        return self.execute(item)

    def subtotal(self) -> SubtotalResult:
        return self.execute(Subtotal())

    def pay(self, method: str | None = None, amount: Decimal | None = None) -> PaymentRegistered:
        return self.execute(AddPayment(method, amount))

    def read_comment(self, line: str) -> str:
        result = self.execute(Comment(line))
        return result or ""

    def write_comment(self, line: str, content: str) -> None:
        self.execute(Comment(line, content))

    def cancel(self) -> Cancelled:
        """38h C. Waits through ``P:`` like normalize."""
        return self._until_settled(CancelInvoice())

    def normalize(self, mv: Decimal, mt: Decimal, fn: str | None = None) -> NormalizedInvoice:
        return self._until_settled(Normalize(mv, mt, fn))

    def _until_settled(self, request: Normalize | CancelInvoice):  # type: ignore[no-untyped-def]
        """Repeat 38h while it answers ``P:``.

        Each repeat is a *new* message (new SEQ): with the same SEQ the MCF would only replay
        its previous ``P:`` answer instead of looking again.
        """
        deadline = self._clock() + self.pending_timeout
        while True:
            result = self.execute(request)
            if not isinstance(result, Pending):
                return result
            if self._clock() >= deadline:
                raise NormalizationPending(result, self.last_status)
            log.info("MCF 38h pending (%s), asking again", result.reason)
            self._sleep(self.pending_interval)

    # -- the invoice flow -----------------------------------------------------------------------
    def check_ready(self) -> McfStatus:
        """C1h, then refuse or repair what would make a new invoice fail."""
        mcf = self.status()
        sta = self.last_status or Status()
        for flag, why in (
            ("memory_full", "fiscal memory full"),
            ("clock_not_set", "MCF clock not set"),
            ("daily_report_required", "daily report must be made first"),
            ("memory_write_error", "fiscal memory write error"),
        ):
            if getattr(sta, flag):
                raise DeviceNotReady(0xC1, why, sta)
        if sta.memory_low:
            self._warn("fiscal memory: fewer than 50 records left")
        if sta.invoice_open:
            # A previous run died mid-invoice: it was never normalized, so cancelling loses
            # nothing fiscal. The caller learns about it through warnings and on_step.
            cancelled = self.cancel()
            self._warn(f"an invoice left open on the MCF was cancelled ({cancelled.text})")
            self.on_step("stale_invoice_cancelled")
        return mcf

    def recover_last(
        self, fn: str, opened: InvoiceOpened | None = None
    ) -> NormalizedInvoice | None:
        """The MCF's result for invoice ``fn`` if it is the last one it normalized, else None.

        For an SFE that crashed (or lost the link) after sending 38h: the C1h "last invoice"
        fields tell whether that invoice was normalized, so it is never normalized twice.

        FC: C1h has no per-type counter, only FVC (all sale types FV/FT/EV/ET together) and
        FRC (FA/EA together). Pass ``opened``, the C0h answer of that invoice (its FC/TC are
        the counters it carries once normalized): when its TC is the device's TC, its FC is
        exact. Otherwise FC is taken from FVC/FRC, which is right only while the device has
        normalized a single type of each family, and the result says ``fc_exact=False``.
        """
        return self.last_result_in(self.status(), fn, opened)

    @staticmethod
    def last_result_in(
        mcf: McfStatus, fn: str, opened: InvoiceOpened | None = None
    ) -> NormalizedInvoice | None:
        """``recover_last`` on a C1h status already read (nothing is sent): for an SFE that
        holds the status from its own exchange, e.g. while resolving intents after a crash."""
        if not fn or mcf.dfn != fn or not mcf.dfs:
            return None
        if opened is not None and opened.tc == mcf.tc:
            fc, exact = opened.fc, True
        else:
            # Nothing came after the last invoice, so the current FVC/FRC is its family's
            # counter: the per-type FC only if that family holds one type (see above).
            fc, exact = (mcf.frc if mcf.dft in CREDIT_TYPES else mcf.fvc), False
        return NormalizedInvoice(
            fc=fc, tc=mcf.tc, ft=mcf.dft, dt=mcf.dfdt, mid=mcf.mid, nif=mcf.nif, fn=mcf.dfn,
            sig=mcf.dfs, fc_exact=exact,
        )

    def seal_invoice(
        self, draft: InvoiceDraft, cross_check: CrossCheck | None = None
    ) -> NormalizedInvoice:
        """C1 -> C3 -> C0 -> 31* -> 36* -> 33 -> cross-check -> 35* -> 38 (waiting through P:).

        Exactly once: if the MCF's last invoice already is ``draft.opening.fn``, its result is
        returned and nothing is sent. A device refusal after C0h cancels the invoice (38h C)
        before the error is raised, so the MCF is left ready for the next one.
        """
        self.warnings = []
        self.last_opened = None
        fn = draft.opening.fn
        mcf = self.check_ready()
        self.on_step("status")
        already = self.last_result_in(mcf, fn)
        if already is not None:
            self._warn(f"invoice {fn} was already normalized; returning the MCF's result")
            return already
        self.set_client(draft.client)
        self.on_step("client")
        self.last_opened = self.open_invoice(draft.opening)
        self.on_step("open")
        try:
            return self._fill_and_normalize(draft, cross_check)
        except (DeviceError, SubtotalMismatch) as exc:
            if not isinstance(exc, NormalizationPending):
                self._cancel_quietly()
            raise

    def _fill_and_normalize(
        self, draft: InvoiceDraft, cross_check: CrossCheck | None
    ) -> NormalizedInvoice:
        for index, item in enumerate(draft.items, 1):
            self.add_item(item)
            self.on_step(f"item:{index}")
        for line, text in draft.comments:
            self.write_comment(line, text)
            self.on_step(f"comment:{line}")
        sub = self.subtotal()
        self.on_step("subtotal")
        device = Totals(sub.mv, sub.mt)
        agreed = device
        if cross_check is not None:
            try:
                agent = cross_check(sub)
            except SubtotalMismatch:
                raise
            except Exception:
                self._cancel_quietly()  # whatever the checker hit, leave no invoice open
                raise
            if agent != device:
                raise SubtotalMismatch(device, agent)
            agreed = agent
            self.on_step("cross_check")
        for index, payment in enumerate(draft.payments, 1):
            self.pay(payment.method, payment.amount)
            self.on_step(f"payment:{index}")
        if not draft.payments:
            self.pay()  # §35h: no data = cash for the whole amount; keeps the flow explicit
            self.on_step("payment:1")
        self.on_step("normalizing")  # the 38h frame goes out next
        try:
            result = self.normalize(agreed.mv, agreed.mt, draft.opening.fn)
        except DeviceError as exc:
            if isinstance(exc, NormalizationPending):
                raise
            # A power cut between "normalized" and "answered" erases the MCF's last answer,
            # so our same-SEQ resend is executed afresh and refused (E:AUCUNE FACTURE OUVERTE
            # on the document's devices). Whatever the refusal, C1h tells whether the invoice
            # was normalized after all: then that is the result, not an error.
            recovered = self._recover_quietly(draft.opening.fn)
            if recovered is None:
                raise
            self._warn(f"38h answered {exc.text!r} but invoice {draft.opening.fn} was normalized; "
                       "returning the MCF's result from C1h")
            self.on_step("recovered")
            return recovered
        self.on_step("normalized")
        return result

    def _recover_quietly(self, fn: str) -> NormalizedInvoice | None:
        try:
            return self.recover_last(fn, self.last_opened)
        except (DeviceError, MCFLinkError) as exc:
            log.warning("could not read C1h after a refused 38h: %s", exc)
            return None

    def _cancel_quietly(self) -> None:
        try:
            self.cancel()
            self.on_step("cancelled")
        except Exception as exc:  # the original error matters more; the next C1h retries
            log.warning("could not cancel the open invoice on the MCF: %s", exc)

    def _warn(self, message: str) -> None:
        log.warning(message)
        self.warnings.append(message)
