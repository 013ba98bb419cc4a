"""The simulated MCF's own amount arithmetic (31h item amounts, 33h per-group subtotal).

Kept apart and small because it is the device's authority: the agent's tax engine is checked
against it. Rules (our reading of Protocole MCF-SFE v1.0 p.15-17; the document's examples 4
and 5 of 31h do not add up, so these rules are a decision, see the report / docs/tax-rules.md):

* line amount = round(PR x QT, 2), half-up;
* specific tax (T.S.): per unit -> TS = round(TSR x QT, 2); in percent -> round(line x p/100, 2);
* the specific tax enters the VAT base;
* TTC mode: the line's MV = line + TS, VAT included; HT mode: MV = (line + TS) + VAT;
* VAT is computed per tax group on the group's accumulated TTC (TTC mode:
  round(G x r/(100+r), 2)) or HT base (HT mode: round(B x r/100, 2)); a single line's MT in the
  31h answer uses the same formula on that line alone.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal

CENT = Decimal("0.01")
ZERO = Decimal("0")
HUNDRED = Decimal("100")
GROUPS = "ABCDEFGHIJKLMNOP"

# Unsigned decimal with a dot, as the document's examples write amounts ("930", "16.00").
_DECIMAL = re.compile(r"^\d{1,13}(?:\.(\d+))?$")


def money(value: Decimal) -> Decimal:
    """Round to the cent, half-up (what a cash register does, not banker's rounding)."""
    return value.quantize(CENT, rounding=ROUND_HALF_UP)


CENT_ZERO = money(ZERO)  # Decimal("0.00"): the VAT of a group with nothing in it


def parse_decimal(text: str, places: int = 2) -> Decimal:
    """Strict unsigned decimal with at most ``places`` decimals; ValueError otherwise."""
    match = _DECIMAL.match(text)
    if match is None or (match.group(1) is not None and len(match.group(1)) > places):
        raise ValueError(f"not an amount with at most {places} decimals: {text!r}")
    return Decimal(text)


def fmt2(value: Decimal) -> str:
    """Always two decimals: 464 -> '464.00' (31h, C1h, 38h)."""
    return f"{money(value):.2f}"


def fmt_subtotal(value: Decimal) -> str:
    """The 33h example's style: zero is '0', anything else has two decimals."""
    return "0" if value == 0 else fmt2(value)


def fmt_payment(value: Decimal) -> str:
    """The 35h examples' style: 'R-400', 'R100', 'R0'; cents only when there are some."""
    value = money(value)
    return f"{value:.0f}" if value == value.to_integral_value() else f"{value:.2f}"


@dataclass(frozen=True)
class SpecificTax:
    """TSR of 31h: an amount per unit, or a percentage of the line amount."""

    value: Decimal
    percent: bool


@dataclass(frozen=True)
class LineAmounts:
    """What 31h answers, plus what the group totals need."""

    line: Decimal  # round(PR x QT)
    mv: Decimal  # total with VAT and specific tax
    mh: Decimal  # total without VAT and without specific tax
    mt: Decimal  # VAT
    ts: Decimal  # specific tax
    group_base: Decimal  # what accumulates in the group: TTC amount, or HT base (line + TS)


def vat_of(base: Decimal, rate: Decimal, ht_mode: bool) -> Decimal:
    """VAT on a TTC amount (included) or on an HT base (added)."""
    if ht_mode:
        return money(base * rate / HUNDRED)
    return money(base * rate / (HUNDRED + rate))


def line_amounts(
    price: Decimal,
    quantity: Decimal,
    rate: Decimal,
    ht_mode: bool,
    specific: SpecificTax | None = None,
) -> LineAmounts:
    line = money(price * quantity)
    ts = ZERO
    if specific is not None:
        ts = money(line * specific.value / HUNDRED) if specific.percent else money(
            specific.value * quantity
        )
    base = line + ts  # the specific tax is part of the VAT base
    mt = vat_of(base, rate, ht_mode)
    if ht_mode:
        return LineAmounts(line=line, mv=base + mt, mh=line, mt=mt, ts=ts, group_base=base)
    return LineAmounts(line=line, mv=base, mh=base - mt - ts, mt=mt, ts=ts, group_base=base)


@dataclass(frozen=True)
class Subtotal:
    """The 33h answer, as numbers."""

    mv: Decimal
    mv_by_group: dict[str, Decimal]
    mt_by_group: dict[str, Decimal]
    mts: Decimal
    mcur: Decimal

    @property
    def mt(self) -> Decimal:
        return sum(self.mt_by_group.values(), ZERO)

    def fields(self) -> list[str]:
        """MV, MVA..MVP, MTA..MTP, MTS, MCUR in the 33h answer's order and style."""
        return (
            [fmt_subtotal(self.mv)]
            + [fmt_subtotal(self.mv_by_group[g]) for g in GROUPS]
            + [fmt_subtotal(self.mt_by_group[g]) for g in GROUPS]
            + [fmt_subtotal(self.mts), fmt_subtotal(self.mcur)]
        )


@dataclass
class InvoiceTotals:
    """Running per-group accumulation of an open invoice."""

    ht_mode: bool
    rates: dict[str, Decimal]
    usd_rate: Decimal | None = None
    base_by_group: dict[str, Decimal] = field(default_factory=dict)
    ts_total: Decimal = ZERO

    def add(self, group: str, amounts: LineAmounts) -> None:
        self.base_by_group[group] = self.base_by_group.get(group, ZERO) + amounts.group_base
        self.ts_total += amounts.ts

    def subtotal(self) -> Subtotal:
        mv_by_group: dict[str, Decimal] = {}
        mt_by_group: dict[str, Decimal] = {}
        for group in GROUPS:
            base = self.base_by_group.get(group)
            if base is None:
                # A group no item uses: what vat_of(ZERO, …) gives, without its Decimal arithmetic
                # (most invoices use one or two of the 16 groups).
                mt_by_group[group] = CENT_ZERO
                mv_by_group[group] = ZERO + CENT_ZERO if self.ht_mode else ZERO
                continue
            vat = vat_of(base, self.rates[group], self.ht_mode)
            mt_by_group[group] = vat
            mv_by_group[group] = base + vat if self.ht_mode else base
        mv = sum(mv_by_group.values(), ZERO)
        mcur = money(mv / self.usd_rate) if self.usd_rate else ZERO
        return Subtotal(mv, mv_by_group, mt_by_group, self.ts_total, mcur)
