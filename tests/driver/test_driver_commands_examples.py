"""Every example of "Protocole MCF-SFE" v1.0 that is self-consistent, byte for byte.

The printed examples wrap long lines and show TAB as runs of spaces; the DATA below is built
without those layout artefacts (see docs/mcf-protocol.md).
"""
from __future__ import annotations

from datetime import datetime
from decimal import Decimal as D

import pytest

from drivers.usb_fiscal_memory.commands import (
    AddItem,
    AddPayment,
    Cancelled,
    CancelInvoice,
    ClientInfo,
    Comment,
    InvoiceOpened,
    ItemRegistered,
    Normalize,
    NormalizedInvoice,
    OpenInvoice,
    PaymentRegistered,
    Pending,
    ReadServerLink,
    ReadStatus,
    ReadTaxpayerInfo,
    RestartAccepted,
    ServerLinkStatus,
    SetClient,
    SpecificTax,
    Subtotal,
    qr_payload,
)
from drivers.usb_fiscal_memory.errors import DeviceError, ResponseParseError
from drivers.usb_fiscal_memory.fields import InvalidRequest
from drivers.usb_fiscal_memory.framing import decode_command, encode_command, encode_response

IDLE = bytes([0x80] * 6)


# ------------------------------------------------------------------------------ C1h
C1H_EXAMPLE = (
    b"AB01000001-1,A1234567B,20250301100320,49,46,3,20250301100305,FV,"
    b"QWERTYUIOPLKJHGFDSAZXCVB,FAC05/2025,13000.00,0.00,16.00,8.00,0.00,0.00,16.0"
    b"0,8.00,0.00,0.00,0.00,0.00,0.00,0.00,0.00,0.00,0.00"
)


def test_c1h_example_answer():
    s = ReadStatus().parse(C1H_EXAMPLE)
    assert ReadStatus().data() == b""
    assert (s.mid, s.nif, s.dt, s.tc, s.fvc, s.frc) == (
        "AB01000001-1", "A1234567B", "20250301100320", 49, 46, 3,
    )
    assert (s.dfdt, s.dft, s.dfs, s.dfn, s.dmv) == (
        "20250301100305", "FV", "QWERTYUIOPLKJHGFDSAZXCVB", "FAC05/2025", D("13000.00"),
    )
    assert s.rates["A"] == D("0.00") and s.rates["B"] == D("16.00") and s.rates["C"] == D("8.00")
    assert s.rates["F"] == D("16.00") and s.rates["G"] == D("8.00") and s.rates["P"] == D("0")
    assert len(s.rates) == 16
    assert s.clock == datetime(2025, 3, 1, 10, 3, 20)
    assert s.last_invoice_time == datetime(2025, 3, 1, 10, 3, 5)


def test_c1h_example_with_its_stray_space_still_parses():
    printed = C1H_EXAMPLE.replace(b"0.00,0.00,0.00,0.00,0.00,0.00,0.00", b" 0.00,0.00,0.00,0.00,0.00,0.00,0.00", 1)
    assert ReadStatus().parse(printed).rates["P"] == D("0.00")


def test_c1h_too_few_fields_is_a_parse_error():
    with pytest.raises(ResponseParseError):
        ReadStatus().parse(b"AB01000001-1,A1234567B")


def test_c1h_full_frame_roundtrip():
    frame = encode_response(0x20, 0xC1, C1H_EXAMPLE, IDLE)
    assert frame[1] == 0x20 + len(C1H_EXAMPLE) + 11
    assert encode_command(0x20, 0xC1, ReadStatus().data()) == bytes.fromhex("01 24 20 c1 05 30 31 30 3a 03")


# ------------------------------------------------------------------------------ C2h / 2Bh
def test_c2h_example_and_one_day_alert():
    link = ReadServerLink().parse(b"49,49,20250301100118,DIS")
    assert link == ServerLinkStatus(49, 49, "20250301100118", "DIS", None)
    assert not link.is_stale(datetime(2025, 3, 2, 10, 1, 18))
    assert link.is_stale(datetime(2025, 3, 2, 10, 1, 19))
    assert ReadServerLink(restart=True).data() == b"RESTART"
    assert ReadServerLink(restart=True).parse(b"R") == RestartAccepted("R")


def test_2bh_example():
    assert ReadTaxpayerInfo("I0").data() == b"I0"
    assert ReadTaxpayerInfo("I0").parse(b"Restaurant ABC") == "Restaurant ABC"
    assert ReadTaxpayerInfo("I1").parse("Av. X^x2c; n°5".encode()) == "Av. X, n°5"
    with pytest.raises(InvalidRequest):
        ReadTaxpayerInfo("I9")


# ------------------------------------------------------------------------------ C3h
def test_c3h_example():
    client = ClientInfo("PM", "B1234567C", "ABC SARL", "BOULEVARD 23", "3488772", "info@abcsarl.cd", "RCCM20250124")
    assert SetClient(client).data() == b"PM,B1234567C,ABC SARL,BOULEVARD 23,3488772,info@abcsarl.cd,RCCM20250124"
    assert SetClient(client).parse(b"R") is None
    assert SetClient().data() == b""
    err = SetClient().parse(b"E:NIF invalide")
    assert isinstance(err, DeviceError) and err.text == "NIF invalide" and err.cmd == 0xC3


def test_c3h_escapes_special_characters():
    client = ClientInfo("PM", "B1", "A, B & C <SARL>")
    assert SetClient(client).data() == b"PM,B1,A^x2c; B ^amp; C ^lt;SARL^gt;,,,,"


# ------------------------------------------------------------------------------ C0h
def test_c0h_example_1_sale_no_buyer():
    req = OpenInvoice("1123", "Jan", "00001234A", "FV", "TTC", "SFEABC001", "FAC05/2025")
    assert req.data() == b"1123,Jan,00001234A,FV,TTC,SFEABC001,FAC05/2025"
    assert req.parse(b"24,50,,,,,,") == InvoiceOpened(24, 50)


def test_c0h_example_2_credit_note():
    req = OpenInvoice(
        "1123", "Jan", "A1234567B", "FA", "TTC", "SFEABC001", "FAC05/2025",
        credit_reason="COR", credit_ref="ABCDABCDABCDABCDABCDABCD",
    )
    assert req.data() == b"1123,Jan,A1234567B,FA,COR,ABCDABCDABCDABCDABCDABCD,TTC,SFEABC001,FAC05/2025"
    assert req.parse(b"1,51,,,,,,") == InvoiceOpened(1, 51)


def test_c0h_example_3_ht_prices():
    req = OpenInvoice("1123", "Jan", "A1234567B", "FV", "HT", "SFEABC001", "FAC05/2025")
    assert req.data() == b"1123,Jan,A1234567B,FV,HT,SFEABC001,FAC05/2025"
    assert req.parse(b"26,53,,,,,,") == InvoiceOpened(26, 53)


def test_c0h_example_4_export_seven_field_answer():
    req = OpenInvoice("1123", "Jan", "A1234567B", "EV", "TTC", "SFEABC001", "FAC05/2025")
    assert req.data() == b"1123,Jan,A1234567B,EV,TTC,SFEABC001,FAC05/2025"
    assert req.parse(b"43,75,,,,,") == InvoiceOpened(43, 75)  # ambiguity 3: 7 fields


def test_c0h_answer_with_buyer_and_error():
    req = OpenInvoice("1", "Jan", "A1", "FV", "TTC", "S", "F1")
    opened = req.parse(b"2,3,B1,ABC^x2c; SARL,BD 23,348,i@a.cd,RC1")
    assert opened.cnom == "ABC, SARL" and opened.crccm == "RC1"
    err = req.parse("E:Le numéro de facture est déjà utilisé".encode())
    assert isinstance(err, DeviceError) and "déjà" in err.text
    with pytest.raises(ResponseParseError):
        req.parse(b"2,3")


def test_c0h_validation_and_exchange_rate():
    from datetime import date

    with pytest.raises(InvalidRequest):
        OpenInvoice("1", "Jan", "A1", "FA", "TTC", "S", "F1")  # credit note without RR/RN
    with pytest.raises(InvalidRequest):
        OpenInvoice("1", "Jan", "A1", "FV", "TTC", "S", "F" * 65)  # FN refused, not cut
    req = OpenInvoice("1", "Jan", "A1", "FV", "TTC", "S", "F1", crt=D("2850.5"), cdt=date(2025, 3, 1))
    assert req.data() == b"1,Jan,A1,FV,TTC,S,F1,2850.5,20250301"


# ------------------------------------------------------------------------------ 31h
def test_31h_example_1_water_exempt():
    item = AddItem("Eau", "BIE", "A", D("0.00"), D("380"), D("380"))
    assert item.data() == b"Eau\tBIE,A0.00%380\t380"


def test_31h_example_2_juice():
    item = AddItem("JUS", "BIE", "B", D("16.00"), D("930"), D("930"))
    assert item.data() == b"JUS\tBIE,B16.00%930\t930"


def test_31h_example_3_two_juices():
    item = AddItem("JUS", "BIE", "B", D("16"), D("1860"), D("930"), quantity=D("2"))
    assert item.data() == b"JUS\tBIE,B16.00%1860\t930*2"


def test_31h_example_6_price_change():
    item = AddItem(
        "SPEC", "BIE", "B", D("16.00"), D("2000"), D("500"), quantity=D("4"),
        original_price=D("1000"), price_change_desc="réduction 50%",
    )
    assert item.data() == "SPEC\tBIE,B16.00%2000\t500*4\t1000,réduction 50%".encode()


def test_31h_layout_with_desc_and_specific_tax():
    item = AddItem(
        "BIERE", "BIE", "B", D("16"), D("2300"), D("500"), quantity=D("4"), desc="SKU-1",
        specific_tax=SpecificTax(D("75"), D("300"), desc="accise"),
    )
    assert item.data() == b"BIERE\nSKU-1\tBIE,B16.00%2300\t500*4;T75,300,accise"
    pct = AddItem("X", "BIE", "B", D("16"), D("2200"), D("500"), quantity=D("4"),
                  specific_tax=SpecificTax(D("10"), D("200"), percent=True))
    assert pct.data() == b"X\tBIE,B16.00%2200\t500*4;T10%,200"


def test_31h_name_escaped_cleaned_and_cut_to_64_bytes():
    item = AddItem("Lait, 1L <promo>\tfrais", "BIE", "B", D("16"), D("464"), D("464"))
    assert item.data().startswith(b"Lait^x2c; 1L ^lt;promo^gt; frais\t")
    long = AddItem("é" * 100, "SER", "A", D("0"), D("1"), D("1"))
    name = long.data().split(b"\t")[0]
    assert name == "é".encode() * 32 and len(name) == 64
    commas = AddItem("," * 40, "SER", "A", D("0"), D("1"), D("1"))
    assert commas.data().split(b"\t")[0] == b"^x2c;" * 12  # cut whole escapes, never inside one


def test_31h_refuses_float_and_three_decimal_money():
    with pytest.raises(InvalidRequest):
        AddItem("X", "BIE", "B", D("16"), 1.5, D("1")).data()  # type: ignore[arg-type]
    with pytest.raises(InvalidRequest):
        AddItem("X", "BIE", "B", D("16"), D("1.005"), D("1")).data()
    with pytest.raises(InvalidRequest):
        AddItem("X", "BIE", "Q", D("16"), D("1"), D("1"))


def test_31h_answer():
    item = AddItem("Eau", "BIE", "A", D("0.00"), D("380"), D("380"))
    assert item.parse(b"380.00,380.00,0.00,0.00") == ItemRegistered(D("380"), D("380"), D("0"), D("0"))
    assert isinstance(item.parse(b"E:Groupe invalide"), DeviceError)


# ------------------------------------------------------------------------------ 33h
def test_33h_example_answer():
    printed = b"   4100.00,3600.00,500.00,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,69.00,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0"
    sub = Subtotal().parse(printed)
    assert sub.mv == D("4100.00")
    assert sub.mv_groups["A"] == D("3600.00") and sub.mv_groups["B"] == D("500.00")
    assert sub.mt_groups["B"] == D("69.00") and sub.mt == D("69.00")
    assert sub.mts == 0 and sub.mcur == 0
    assert Subtotal().data() == b""


# ------------------------------------------------------------------------------ 35h
@pytest.mark.parametrize(
    "method, amount, data, answer, mp",
    [
        (None, None, b"", b"R0", D("0")),  # example 1
        ("C", D("2400"), b"C2400", b"R0", D("0")),  # example 2
        ("M", D("2000"), b"M2000", b"R-400", D("-400")),  # example 3
        ("M", D("1000"), b"M1000", b"R-1400", D("-1400")),  # example 4
        ("V", D("500"), b"V500", b"R-900", D("-900")),
        ("E", D("1000"), b"E1000", b"R100", D("100")),
    ],
)
def test_35h_examples(method, amount, data, answer, mp):
    req = AddPayment(method, amount)
    assert req.data() == data
    result = req.parse(answer)
    assert result == PaymentRegistered(mp)


def test_35h_due_and_change():
    assert PaymentRegistered(D("-400")).due == D("400") and PaymentRegistered(D("-400")).change == 0
    assert PaymentRegistered(D("100")).change == D("100")
    assert AddPayment("M").data() == b"M"
    assert isinstance(AddPayment().parse(b"E:Paiement complet"), DeviceError)


# ------------------------------------------------------------------------------ 36h
def test_36h_read_and_write():
    assert Comment("A").data() == b"A"
    assert Comment("A").parse(b"Merci, a bientot".replace(b",", b"^x2c;")) == "Merci, a bientot"
    assert Comment("B", "Merci, à bientôt").data() == "B,Merci^x2c; à bientôt".encode()
    assert Comment("B", "x").parse(b"R") is None
    assert isinstance(Comment("B", "x").parse(b"E:ligne invalide"), DeviceError)
    assert len(Comment("C", "&" * 255).data()) <= 200


# ------------------------------------------------------------------------------ 38h
EXAMPLE_38H_FORM = b"42,70,FV,20250301122547,AB01000001-1,A1234567B,D357MYBKF6QSMSD2XWSEFT6S,FAC01/2025"
TABLE_38H_FORM = b"R:42,70,FV,20250301122547,AB01000001-1,A1234567B,FAC01/2025,D357MYBKF6QSMSD2XWSEFT6S"
EXPECTED_38H = NormalizedInvoice(
    42, 70, "FV", "20250301122547", "AB01000001-1", "A1234567B", "FAC01/2025", "D357MYBKF6QSMSD2XWSEFT6S"
)


def test_38h_valid_amount_request():
    assert Normalize(D("2500"), D("500")).data() == b"2500.00,500.00"
    assert Normalize(D("2500.00"), D("500.00")).data() == b"2500.00,500.00"


@pytest.mark.parametrize("answer", [EXAMPLE_38H_FORM, TABLE_38H_FORM])
@pytest.mark.parametrize("fn", ["FAC01/2025", None])
def test_38h_both_answer_forms(answer, fn):
    # Ambiguity 2: table form (R:, FN then SIG) and the example's form (no R:, SIG then FN).
    assert Normalize(D("2500.00"), D("500.00"), fn).parse(answer) == EXPECTED_38H


def test_38h_fn_decides_over_prefix():
    # Example's order but with R: -- the FN we sent still puts each field in its place.
    mixed = b"R:" + EXAMPLE_38H_FORM
    assert Normalize(D("1"), D("0"), "FAC01/2025").parse(mixed) == EXPECTED_38H


def test_38h_invalid_amount():
    err = Normalize(D("2520.00"), D("500.00")).parse(b"E:LE MONTANT N'EST PAS VALIDE")
    assert Normalize(D("2520.00"), D("500.00")).data() == b"2520.00,500.00"
    assert isinstance(err, DeviceError) and err.text == "LE MONTANT N'EST PAS VALIDE" and err.cmd == 0x38


def test_38h_cancel():
    assert CancelInvoice().data() == b"C"
    assert CancelInvoice().parse(b"E:ANNULEE") == Cancelled("ANNULEE")


def test_38h_pending():
    p = Normalize(D("1"), D("0")).parse(b"P:AB01000001-1,A1234567B,FA01,2500.00,Verification serveur DGI")
    assert p == Pending("AB01000001-1", "A1234567B", "FA01", "2500.00", "Verification serveur DGI")
    assert isinstance(CancelInvoice().parse(b"P:AB01000001-1,A1,FA01,C,attente"), Pending)


def test_38h_wrong_field_count():
    with pytest.raises(ResponseParseError):
        Normalize(D("1"), D("0")).parse(b"R:42,70,FV")


# ------------------------------------------------------------------------------ QR
def test_qr_payload_chapter_5():
    assert (
        qr_payload("AB01000001-1", "D357MYBKF6QSMSD2XWSEFT6S", "A0001234A", "20250301122547")
        == "RDCDEF01;AB01000001-1;D357MYBKF6QSMSD2XWSEFT6S;A0001234A;20250301122547"
    )
    assert EXPECTED_38H.qr_payload == (
        "RDCDEF01;AB01000001-1;D357MYBKF6QSMSD2XWSEFT6S;A1234567B;20250301122547"
    )
    assert EXPECTED_38H.counters == "42/70 FV"


def test_example_frames_decode_on_the_device_side():
    # What the simulator sees for 31h example 1: TAB bytes inside DATA survive the framing.
    frame = encode_command(0x25, 0x31, AddItem("Eau", "BIE", "A", D("0.00"), D("380"), D("380")).data())
    assert decode_command(frame).data == b"Eau\tBIE,A0.00%380\t380"


def test_error_prefix_variants():
    assert SetClient().parse(b"E") == DeviceError(0xC3, "")
    assert Comment("A", "x").parse(b"E E:ligne") == DeviceError(0x36, "ligne")
    assert ReadTaxpayerInfo("I0").parse(b"E LECLERC SARL") == "E LECLERC SARL"
