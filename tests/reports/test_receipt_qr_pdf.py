"""The QR decodes back to the exact payload (zbarimg), and PDF receipts render (pdftoppm)."""
from __future__ import annotations

import shutil
import subprocess

import pytest

from agent.receipts import qr_png, receipt_for, render_pdf
from tests.reports.helpers import device_example_invoice, example_identity, example_request

zbar = pytest.mark.skipif(shutil.which("zbarimg") is None,
                          reason="zbarimg (Debian zbar-tools) is not installed here; .ci/run installs it")
poppler = pytest.mark.skipif(shutil.which("pdftoppm") is None,
                             reason="pdftoppm (Debian poppler-utils) is not installed here; .ci/run installs it")


def decode(png_path) -> list[str]:
    res = subprocess.run(["zbarimg", "--raw", "-q", "-Sbinary", str(png_path)], capture_output=True)
    assert res.returncode == 0, f"zbarimg found no code in {png_path}: {res.stderr!r}"
    return [line for line in res.stdout.decode("utf-8").split("\n") if line]


@zbar
def test_device_qr_round_trip(tmp_path):
    payload = device_example_invoice()["security"]["qr_payload"]
    path = tmp_path / "qr.png"
    path.write_bytes(qr_png(payload))
    assert decode(path) == [payload]


@zbar
def test_delegated_qr_round_trip_through_the_daemon(harness, tmp_path):
    harness.add_credential(harness.credential(1, 100))
    harness.start()
    _, inv, _ = harness.post("/v1/invoices", example_request())
    payload = inv["security"]["qr_payload"]
    assert len(payload) > 250  # the long Stalela form, credential included
    path = tmp_path / "qr.png"
    path.write_bytes(qr_png(payload))
    assert decode(path) == [payload]
    # The PDF receipt's QR, rasterized as a printer would, decodes to the same bytes.
    status, pdf, headers = harness.get(f"/v1/invoices/{inv['id']}/receipt.pdf?format=roll")
    assert status == 200 and headers["Content-Type"] == "application/pdf" and pdf.startswith(b"%PDF")
    (tmp_path / "r.pdf").write_bytes(pdf)
    if shutil.which("pdftoppm"):
        subprocess.run(["pdftoppm", "-r", "200", "-png", str(tmp_path / "r.pdf"), str(tmp_path / "page")], check=True)
        assert decode(next(tmp_path.glob("page*.png"))) == [payload]


@poppler
@pytest.mark.parametrize("fmt", ["roll", "a4"])
def test_pdf_receipt_renders_a_non_empty_page(tmp_path, fmt):
    from PIL import Image

    pdf = render_pdf(receipt_for(device_example_invoice(), example_identity(), duplicate=True), fmt)
    (tmp_path / "r.pdf").write_bytes(pdf)
    subprocess.run(["pdftoppm", "-r", "72", "-png", str(tmp_path / "r.pdf"), str(tmp_path / "page")], check=True)
    pages = sorted(tmp_path.glob("page*.png"))
    assert len(pages) == 1
    img = Image.open(pages[0]).convert("L")
    w, h = img.size
    if fmt == "roll":
        assert 220 <= w <= 230  # 80 mm at 72 dpi
    else:
        assert abs(w - 595) <= 1 and abs(h - 842) <= 1  # A4
    dark = sum(img.histogram()[:128])
    assert dark > 0.01 * w * h, "the page is (nearly) blank"
    res = subprocess.run(["pdftotext", "-layout", str(tmp_path / "r.pdf"), "-"], capture_output=True, text=True)
    if res.returncode == 0:
        for needle in ("FACTURE DE VENTE", "DUPLICATA", "TOTAL TTC", "4.064", "DEF NIM:", "XX01710090-1"):
            assert needle in res.stdout
