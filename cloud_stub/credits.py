"""Credit notes (FA, EA) against the ledger: the original must be there, and never over-credited.

A credit note's `reference.code` is the 24-character code of the invoice it corrects. That
invoice must be in the same outlet's ledger and not itself a credit note, and the credit notes
against it, this one included, never add up to more than its total. The online signer and
reconciliation both ask here, inside their write transaction, so two credit notes racing for the
same original cannot both pass.
"""
from __future__ import annotations

from decimal import Decimal

from fiscal.money import fmt2

from .repository import Tx

CREDIT_TYPES = frozenset({"FA", "EA"})


def problem(tx: Tx, outlet_id: str, inv_type: str, reference_code: str | None,
            total: str) -> tuple[str, str] | None:
    """None when the invoice may be recorded, else (reason, detail)."""
    if inv_type not in CREDIT_TYPES:
        return None
    if reference_code is None:
        return "unknown_original", "a credit note needs the code of its original invoice (reference.code)"
    original = tx.invoice_by_code(outlet_id, reference_code)
    if original is None:
        return "unknown_original", (f"reference {reference_code} is not an invoice of outlet {outlet_id}'s "
                                    "ledger; the original is sealed (and uploaded) before its credit notes")
    if original["inv_type"] in CREDIT_TYPES:
        return "original_is_credit_note", f"reference {reference_code} is a credit note, not an invoice"
    already = sum((Decimal(t) for t in tx.credited_totals(outlet_id, reference_code)), Decimal(0))
    left = Decimal(original["total"]) - already
    if Decimal(total) > left:
        credited = f" less {fmt2(already)} already credited" if already else ""
        return "credit_exceeds_original", (f"credit note total {total} exceeds what is left to credit on "
                                           f"{reference_code}: {original['total']}{credited} = {fmt2(left)}")
    return None
