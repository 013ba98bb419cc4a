"""Printable normalized-invoice receipts: text, PDF and ESC/POS (see docs/reports.md)."""
from __future__ import annotations

from typing import Any

from .layout import (Header, Receipt, build_receipt, fmt_amount, fmt_qty, fmt_time, group_code,
                     header_for)
from ..store.receipts import print_count, record_print
from .render import PDF_FORMATS, WIDTHS, qr_png, render_escpos, render_pdf, render_text, rows

__all__ = [
    "Header", "PDF_FORMATS", "Receipt", "WIDTHS", "build_receipt", "device_info_of", "fmt_amount", "fmt_qty",
    "fmt_time", "group_code", "header_for", "print_count", "qr_png", "receipt_for", "record_print",
    "render_escpos", "render_pdf", "render_text", "rows",
]


def device_info_of(service: Any) -> dict | None:
    """The MCF's 2Bh taxpayer data if the device signer exposes it (`taxpayer_info`: a dict of
    I0..I4 or name/address/city/phone/email, or a method returning one); None otherwise."""
    device = getattr(service, "device", None)
    if device is None:
        return None
    info = getattr(device, "taxpayer_info", None)
    if info is None:  # agent.device.DeviceSigner keeps the 2Bh answer (I0..I4) in state.taxpayer
        info = getattr(getattr(device, "state", None), "taxpayer", None)
    if callable(info):
        try:
            info = info()
        except Exception:
            return None
    return info if isinstance(info, dict) else None


def receipt_for(invoice: dict, identity: Any, *, duplicate: bool = False,
                device_info: dict | None = None) -> Receipt:
    return build_receipt(invoice, header_for(identity, invoice, device_info), duplicate=duplicate)
