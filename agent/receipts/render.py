"""Renderers of a receipt layout: text rows (32/42/48 columns), PDF (fpdf2), ESC/POS (python-escpos).

Every renderer goes through `rows()`: the same padded text lines, bold where the layout says so,
and one QR marker. The text receipt prints the QR payload itself (wrapped at the width, no
separator added: join the lines after "QR:" to get it back); PDF and ESC/POS print the QR image
(error correction M).
"""
from __future__ import annotations

import io
import textwrap
from dataclasses import dataclass

import qrcode
import qrcode.image.pure

from .layout import Receipt

WIDTHS = (32, 42, 48)


@dataclass(frozen=True)
class Row:
    text: str
    bold: bool = False
    qr: str | None = None  # a QR payload: the row stands for the QR image


def _wrap(text: str, width: int) -> list[str]:
    return textwrap.wrap(text, width, break_long_words=True, break_on_hyphens=False) or [""]


def _columns(width: int) -> tuple[int, int, int]:
    amount = max(9, width // 4)
    qty = max(10, width // 3)
    return width - amount - qty, qty, amount


def rows(receipt: Receipt, width: int) -> list[Row]:
    if width < 24:
        raise ValueError("receipts need at least 24 columns")
    out: list[Row] = []
    name_w, qty_w, amt_w = _columns(width)
    for line in receipt.lines:
        k = line.kind
        if k == "blank":
            out.append(Row(""))
        elif k == "rule":
            out.append(Row("-" * width))
        elif k == "center":
            out += [Row(t.center(width).rstrip(), line.bold) for t in _wrap(line.left, width)]
        elif k == "text":
            out += [Row(t, line.bold) for t in _wrap(line.left, width)]
        elif k == "pair":
            left, right = line.left, line.right
            if len(left) + 1 + len(right) <= width:
                out.append(Row(left + " " * (width - len(left) - len(right)) + right, line.bold))
            else:
                out += [Row(t, line.bold) for t in _wrap(left, width)]
                out += [Row(t.rjust(width), line.bold) for t in _wrap(right, width)]
        elif k == "item":
            name, mid, amount = line.left, line.mid, line.right
            tail = mid.ljust(qty_w) + amount.rjust(amt_w)
            if len(mid) > qty_w or len(amount) > amt_w:
                tail = (mid + " " + amount.rjust(max(0, width - len(mid) - 1))).rstrip()
            if not mid and len(name) + 1 + len(amount) <= width:
                out.append(Row(name + " " * (width - len(name) - len(amount)) + amount, line.bold))
            elif len(name) < name_w and len(tail) <= width - name_w:
                out.append(Row((name.ljust(name_w) + tail).rstrip(), line.bold))
            else:
                out += [Row(t, line.bold) for t in _wrap(name, width)]
                out.append(Row((" " * name_w + tail).rstrip() if len(tail) <= width - name_w
                               else tail.rjust(width), line.bold))
        elif k == "qr":
            out.append(Row("", qr=line.left))
        else:  # pragma: no cover - layout kinds are closed
            raise ValueError(f"unknown layout line {k}")
    return out


def render_text(receipt: Receipt, width: int = 42) -> str:
    if width not in WIDTHS:
        raise ValueError(f"width must be one of {', '.join(map(str, WIDTHS))}")
    lines: list[str] = []
    for row in rows(receipt, width):
        if row.qr is not None:
            lines.append("QR:")
            lines += [row.qr[i:i + width] for i in range(0, len(row.qr), width)]
        else:
            lines.append(row.text)
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------ QR

def qr_code(payload: str, *, box_size: int = 10, border: int = 4) -> qrcode.QRCode:
    qr = qrcode.QRCode(error_correction=qrcode.constants.ERROR_CORRECT_M, box_size=box_size, border=border)
    qr.add_data(payload)
    qr.make(fit=True)
    return qr


def qr_png(payload: str, *, box_size: int = 8) -> bytes:
    """A PNG of the QR (error correction M) large enough to scan: 8 px per module by default."""
    buf = io.BytesIO()
    qr_code(payload, box_size=box_size).make_image(image_factory=qrcode.image.pure.PyPNGImage).save(buf)
    return buf.getvalue()


# ------------------------------------------------------------------------------------ PDF

PDF_FORMATS = ("a4", "roll")


def latin1(text: str) -> str:
    # The PDF core fonts are Latin-1: keep accents, replace what Latin-1 lacks.
    return text.replace("’", "'").replace("—", "-").encode("latin-1", "replace").decode("latin-1")


def render_pdf(receipt: Receipt, fmt: str = "roll") -> bytes:
    """A4 (receipt column centred, 10 pt) or an 80 mm roll (42 columns, 72 mm printable width)."""
    from fpdf import FPDF

    if fmt not in PDF_FORMATS:
        raise ValueError("format must be a4 or roll")
    width = 42 if fmt == "roll" else 48
    body = rows(receipt, width)
    font_pt = 8.0 if fmt == "roll" else 10.0
    line_h = font_pt * 0.3528 * 1.25  # mm
    char_w = font_pt * 0.6 * 0.3528  # Courier advance: 0.6 em
    col_w = char_w * width
    qr_mm = 50.0 if fmt == "roll" else 60.0
    if fmt == "roll":
        page_h = 10 + len(body) * line_h + qr_mm + 10
        pdf = FPDF(unit="mm", format=(80, max(page_h, 100)))
        pdf.set_margins(4, 5, 4)
        pdf.set_auto_page_break(False)
    else:
        pdf = FPDF(unit="mm", format="A4")
        pdf.set_margins(15, 15, 15)
        pdf.set_auto_page_break(True, margin=15)
    pdf.set_title(latin1(f"Facture normalisée {receipt.invoice_id}"))
    pdf.set_creator("Stalela Edge")
    pdf.add_page()
    x0 = (pdf.w - col_w) / 2
    for row in body:
        if row.qr is not None:
            png = io.BytesIO(qr_png(row.qr, box_size=6))
            if fmt == "a4" and pdf.get_y() + qr_mm > pdf.h - 15:
                pdf.add_page()
            pdf.image(png, x=(pdf.w - qr_mm) / 2, y=pdf.get_y() + 1, w=qr_mm, h=qr_mm)
            pdf.set_y(pdf.get_y() + qr_mm + 2)
            continue
        pdf.set_font("Courier", "B" if row.bold else "", font_pt)
        pdf.set_x(x0)
        pdf.cell(col_w, line_h, latin1(row.text), new_x="LMARGIN", new_y="NEXT")
    return bytes(pdf.output())


# ------------------------------------------------------------------------------------ ESC/POS

def render_escpos(receipt: Receipt, width: int = 48, *, native_qr: bool = True, cut: bool = True) -> bytes:
    """ESC/POS bytes for a thermal printer (48 columns = 80 mm font A, 32 = 58 mm).

    The QR is sent as the printer's native QR command (GS ( k, model 2, error correction M): the
    printer draws it, which is fast and exact; `native_qr=False` sends a raster image instead.
    """
    from escpos.printer import Dummy

    if width not in WIDTHS:
        raise ValueError(f"width must be one of {', '.join(map(str, WIDTHS))}")
    p = Dummy()
    p.hw("INIT")
    bold = False
    for row in rows(receipt, width):
        if row.qr is not None:
            p.set(align="center")
            p.qr(row.qr, ec=_ec_m(), size=4 if len(row.qr) > 120 else 6, model=2, native=native_qr)
            p.set(align="left")
            continue
        if row.bold != bold:
            p.set(bold=row.bold)
            bold = row.bold
        p.text(row.text + "\n")
    if bold:
        p.set(bold=False)
    p.text("\n\n")
    if cut:
        p.cut()
    return p.output


def _ec_m():
    from escpos.constants import QR_ECLEVEL_M

    return QR_ECLEVEL_M
