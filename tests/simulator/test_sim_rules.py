"""The rules a real MCF enforces, exercised with the document's own DATA (raw frames)."""
from __future__ import annotations

import dataclasses
from datetime import timedelta
from pathlib import Path

from simulator.device import DeviceOptions
from simulator.engine import MCFEngine
from simulator.faults import FaultSwitchboard
from simulator.state import FiscalState

from sim_helpers import NIF, Host


def test_c0h_without_c3h_is_refused(host: Host) -> None:
    answer = host.send(0xC0, f"1123,Jan,{NIF},FV,TTC,SFEABC001,FAC05/2025")
    assert answer.text.startswith("E:")
    assert answer.status.command_forbidden
    assert not answer.status.invoice_open


def test_c3h_is_needed_again_for_each_invoice(host: Host) -> None:
    host.sell("F1")
    answer = host.send(0xC0, f"1123,Jan,{NIF},FV,TTC,SFEABC001,F2")
    assert answer.text.startswith("E:") and answer.status.command_forbidden


def test_c0h_answers_next_counters_and_client_fields(host: Host) -> None:
    assert host.send(0xC3, "PM,B1234567C,ABC SARL,BOULEVARD 23,3488772,info@abcsarl.cd,RCCM20250124").text == "R"
    answer = host.send(0xC0, f"1123,Jan,{NIF},FV,TTC,SFEABC001,FAC05/2025")
    assert answer.text == "1,1,B1234567C,ABC SARL,BOULEVARD 23,3488772,info@abcsarl.cd,RCCM20250124"
    assert answer.status.invoice_open


def test_c0h_example_1_anonymous_client_gives_eight_fields(host: Host) -> None:
    assert host.open_invoice("FAC05/2025").text == "1,1,,,,,,"


def test_c0h_seven_field_variant(tmp_path: Path) -> None:
    host = Host(MCFEngine(tmp_path / "m.json", options=DeviceOptions(c0h_fields=7)))
    assert host.open_invoice("FAC05/2025").text == "1,1,,,,,"


def test_second_c0h_while_open_is_refused(host: Host) -> None:
    host.open_invoice("F1")
    assert host.send(0xC3).status.command_forbidden  # client info belongs before C0h
    answer = host.send(0xC0, f"1123,Jan,{NIF},FV,TTC,SFEABC001,F2")
    assert answer.text == "E:UNE FACTURE EST DEJA OUVERTE"
    assert answer.status.command_forbidden and answer.status.invoice_open


def test_fn_equal_to_last_normalized_fn_is_refused(host: Host) -> None:
    host.sell("FAC05/2025")
    answer = host.open_invoice("FAC05/2025")
    assert answer.text == "E:LE NUMERO DE FACTURE EST DEJA UTILISE POUR LA FACTURE PRECEDENTE"
    assert not answer.status.invoice_open
    assert not host.open_invoice("FAC06/2025").text.startswith("E:")


def test_c0h_with_another_taxpayers_nif_is_refused(host: Host) -> None:
    host.send(0xC3)
    answer = host.send(0xC0, "1123,Jan,00001234A,FV,TTC,SFEABC001,FAC05/2025")
    assert answer.text == "E:LE NIF NE CORRESPOND PAS AU CONTRIBUABLE"


def test_c0h_syntax_errors_raise_the_syntax_bit(host: Host) -> None:
    host.send(0xC3)
    for data in (f"1123,Jan,{NIF},XX,TTC,S,F", f"1123,Jan,{NIF},FV,NET,S,F", f"1123,Jan,{NIF},FV,TTC,S,{'9' * 65}"):
        answer = host.send(0xC0, data)
        assert answer.text.startswith("E:ERREUR DE SYNTAXE"), data
        assert answer.status.syntax_error


def test_items_only_while_an_invoice_is_open(host: Host) -> None:
    answer = host.item("EAU", "A", "0.00", "380", "380")
    assert answer.text == "E:AUCUNE FACTURE OUVERTE"
    assert answer.status.command_forbidden


def test_31h_examples_1_to_3(host: Host) -> None:
    host.open_invoice()
    assert host.send(0x31, "Eau\tBIE,A0.00%380\t380").text == "380.00,380.00,0.00,0.00"
    assert host.send(0x31, "JUS\tBIE,B16.00%930\t930").text == "930.00,801.72,128.28,0.00"
    assert host.send(0x31, "JUS\tBIE,B16.00%1860\t930*2").text == "1860.00,1603.45,256.55,0.00"


def test_31h_specific_tax_per_unit_and_percent(host: Host) -> None:
    host.open_invoice()
    # Example 4 with the amounts corrected: 4 x 500 + 4 x 75 T.S. = 2300 TTC, VAT on 2300.
    assert host.send(0x31, "SPEC\tBIE,B16.00%2300\t500*4;T75,300").text == "2300.00,1682.76,317.24,300.00"
    # Example 5 corrected: T.S. 10 % of 2000 = 200.
    assert host.send(0x31, "SPEC\tBIE,B16.00%2200\t500*4;T10%,200").text == "2200.00,1696.55,303.45,200.00"


def test_31h_document_examples_4_and_5_do_not_add_up_and_are_refused(host: Host) -> None:
    host.open_invoice()
    # Example 4 also lacks the comma between ITYPE and TAX: a syntax error.
    assert host.send(0x31, "SPEC\tBIEB16.00%2357\t500*4;T75,300").status.syntax_error
    assert host.send(0x31, "SPEC\tBIE,B16.00%2357\t500*4;T75,300").text == "E:LE MONTANT DE L'ARTICLE N'EST PAS VALIDE"
    assert host.send(0x31, "SPEC\tBIE,B16.00%2200\t500*4;T10%,168").text == (
        "E:LE MONTANT DE LA TAXE SPECIFIQUE N'EST PAS VALIDE"
    )


def test_31h_example_6_price_change_and_description(host: Host) -> None:
    host.open_invoice()
    answer = host.send(0x31, "SPEC\nREF-42\tBIE,B16.00%2000\t500*4\t1000,reduction 50%")
    assert answer.text == "2000.00,1724.14,275.86,0.00"


def test_31h_ht_mode_adds_vat(host: Host) -> None:
    host.open_invoice(mode="HT")
    assert host.send(0x31, "LAIT\tBIE,B16.00%400\t400").text == "464.00,400.00,64.00,0.00"
    # Specific tax enters the VAT base: 1000 HT + 25 T.S. -> VAT 16 % of 1025.
    assert host.send(0x31, "BIERE\tBIE,B16.00%1025\t1000;T25,25").text == "1189.00,1000.00,164.00,25.00"


def test_31h_wrong_rate_for_the_group_is_refused(host: Host) -> None:
    host.open_invoice()
    answer = host.item("PAIN", "C", "8.00", "100", "100")  # C went from 8 % to 5 % in 2026
    assert answer.text == "E:LE TAUX DU GROUPE C N'EST PAS VALIDE"
    assert host.send(0x33).text.startswith("0,")  # nothing was registered


def test_subtotal_of_the_dgi_example_invoice(host: Host) -> None:
    host.open_invoice()
    host.dgi_example_items()
    fields = host.send(0x33).text.split(",")
    assert len(fields) == 35
    mv, mva, mvb = fields[0:3]
    mtb = fields[17 + 1]
    assert (mv, mva, mvb, mtb) == ("4064.00", "3600.00", "464.00", "64.00")
    assert fields == ["4064.00", "3600.00", "464.00"] + ["0"] * 15 + ["64.00"] + ["0"] * 16


def test_subtotal_vat_is_per_group_not_per_line(host: Host) -> None:
    host.open_invoice()
    for _ in range(3):
        host.item("BONBON", "B", "16.00", "1", "1")  # per line VAT 0.14, three lines 0.42
    fields = host.send(0x33).text.split(",")
    assert fields[0] == "3.00" and fields[18] == "0.41"  # round(3 x 16/116) = 0.41


def test_35h_payment_examples_1_to_4(host: Host) -> None:
    def invoice_of_2400() -> None:
        host.open_invoice(fn=f"F{host.seq}")
        assert host.item("ARTICLE", "B", "16.00", "2400", "2400").text.startswith("2400.00")

    invoice_of_2400()
    assert host.send(0x35).text == "R0"  # example 1: no data, cash for everything
    assert host.send(0x38, "C").text == "E:ANNULEE"
    invoice_of_2400()
    assert host.send(0x35, "C2400").text == "R0"  # example 2
    host.send(0x38, "C")
    invoice_of_2400()
    assert host.send(0x35, "M2000").text == "R-400"  # example 3
    host.send(0x38, "C")
    invoice_of_2400()
    assert [host.send(0x35, d).text for d in ("M1000", "V500", "E1000")] == ["R-1400", "R-900", "R100"]


def test_35h_after_full_payment_is_an_error(host: Host) -> None:
    host.open_invoice()
    host.item("ARTICLE", "B", "16.00", "2400", "2400")
    assert host.send(0x35, "M").text == "R0"  # a method without amount: the remainder
    answer = host.send(0x35, "E100")
    assert answer.text == "E:LE PAIEMENT EST DEJA COMPLET"
    assert answer.status.command_forbidden


def test_35h_bad_method_is_a_syntax_error(host: Host) -> None:
    host.open_invoice()
    host.item("ARTICLE", "B", "16.00", "2400", "2400")
    assert host.send(0x35, "X100").status.syntax_error


def test_no_items_after_a_payment(host: Host) -> None:
    host.open_invoice()
    host.item("ARTICLE", "B", "16.00", "2400", "2400")
    host.send(0x35, "M1000")
    assert host.item("AUTRE", "A", "0.00", "1", "1").text == "E:ARTICLE REFUSE APRES LE PAIEMENT"


def test_36h_comment_lines_read_and_write(host: Host) -> None:
    host.open_invoice()
    assert host.send(0x36, "A,REF DGI 12^x2c; du 01/03").text == "R"
    assert host.send(0x36, "A").text == "REF DGI 12^x2c; du 01/03"
    assert host.send(0x36, "H").text == ""
    assert host.send(0x36, "Z,x").status.syntax_error
    assert host.send(0x36, "B," + "x" * 190).text == "R"


def test_38h_wrong_amounts_fail_and_leave_the_invoice_open(host: Host, engine: MCFEngine) -> None:
    host.open_invoice()
    host.dgi_example_items()
    answer = host.send(0x38, "4084.00,64.00")
    assert answer.text == "E:LE MONTANT N'EST PAS VALIDE"
    assert answer.status.invoice_open
    assert host.send(0x38, "4064.00,64.01").text == "E:LE MONTANT N'EST PAS VALIDE"
    assert engine.state.tc == 0
    assert host.send(0x38, "4064.00,64.00").text.startswith("R:1,1,FV,")
    assert engine.state.tc == 1


def test_38h_cancel(host: Host, engine: MCFEngine) -> None:
    host.open_invoice()
    host.dgi_example_items()
    answer = host.send(0x38, "C")
    assert answer.text == "E:ANNULEE"
    assert not answer.status.invoice_open
    assert engine.state.tc == 0
    assert host.send(0x38, "C").status.command_forbidden  # nothing left to cancel


def test_38h_success_table_form(host: Host, engine: MCFEngine) -> None:
    fields = host.sell("FAC01/2025")
    fc, tc, ft, dt, mid, nif, fn, sig = fields
    assert (fc, tc, ft, mid, nif, fn) == ("1", "1", "FV", "SIM0000001-1", NIF, "FAC01/2025")
    assert len(dt) == 14 and dt.isdigit()
    assert len(sig) == 24 and sig.isalnum() and sig == sig.upper()
    assert engine.state.last_invoice is not None and engine.state.last_invoice.sig == sig


def test_38h_success_example_form(tmp_path: Path) -> None:
    provision = FiscalState.new(mid="AB01000001-1", nif=NIF)
    engine = MCFEngine(tmp_path / "m.json", options=DeviceOptions(answer_style="example"), provision=provision)
    host = Host(engine)
    host.open_invoice("FAC01/2025")
    host.item("ARTICLE", "B", "16.00", "2500", "2500")
    text = host.send(0x38, "2500.00,344.83").text
    fc, tc, ft, dt, mid, nif, sig, fn = text.split(",")
    assert not text.startswith("R:")
    assert (fc, tc, ft, mid, nif, fn) == ("1", "1", "FV", "AB01000001-1", NIF, "FAC01/2025")
    assert len(sig) == 24


def test_c1h_reports_counters_last_invoice_and_rates(host: Host) -> None:
    host.sell("FAC05/2025", price="13000")
    fields = host.send(0xC1).text.split(",")
    assert len(fields) == 27
    mid, nif, dt, tc, fvc, frc, dfdt, dft, dfs, dfn, dmv = fields[:11]
    assert (mid, nif, tc, fvc, frc, dft, dfn, dmv) == ("SIM0000001-1", NIF, "1", "1", "0", "FV", "FAC05/2025", "13000.00")
    assert len(dfs) == 24 and len(dfdt) == 14
    assert fields[11:] == ["0.00", "16.00", "5.00", "0.00", "0.00", "16.00", "5.00"] + ["0.00"] * 7 + ["1.00", "1.00"]


def test_c1h_with_a_long_fn_still_fits_one_frame(host: Host) -> None:
    fn = "F" * 64
    host.sell(fn)
    answer = host.send(0xC1)
    assert len(answer.text.encode()) <= 200
    assert answer.text.split(",")[9] == fn[: len(answer.text.split(",")[9])]


def test_c2h_link_state_and_restart(host: Host, faults: FaultSwitchboard) -> None:
    host.sell("F1")
    ec, dc, dt, sta = host.send(0xC2).text.split(",")
    assert (ec, dc, sta) == ("1", "1", "CON") and len(dt) == 14
    faults.set("dgi_offline", True)
    host.sell("F2")
    assert host.send(0xC2).text.split(",")[0:2] == ["1", "2"]
    assert host.send(0xC2).text.endswith(",DIS")
    assert host.send(0xC2, "RESTART").text.split(",")[3] == "RES"
    assert host.send(0xC2, "REBOOT").status.syntax_error


def test_2bh_taxpayer_info(host: Host) -> None:
    assert host.send(0x2B, "I0").text == "STALELA SIMULATOR SARL"
    assert host.send(0x2B, "I2").text == "KINSHASA"
    assert host.send(0x2B, "I9").status.syntax_error


def test_unknown_command_sets_invalid_command(host: Host) -> None:
    answer = host.send(0x99)
    assert answer.text == "" and answer.status.invalid_command


def test_status_bits_invoice_open_clock_and_daily_report(host: Host, faults: FaultSwitchboard) -> None:
    assert host.send(0xC1).status.active == []
    host.open_invoice()
    assert host.send(0xC1).status.active == ["invoice_open"]
    host.send(0x38, "C")
    faults.set("daily_report_required", True)
    assert host.send(0xC1).status.daily_report_required
    faults.set("clock_not_set", True)
    status = host.send(0xC1).status
    assert status.clock_not_set
    assert host.open_invoice().text == "E:LA DATE ET L'HEURE NE SONT PAS REGLEES"


def test_daily_report_required_after_configured_invoice_count(tmp_path: Path) -> None:
    engine = MCFEngine(tmp_path / "m.json", options=DeviceOptions(daily_report_every_invoices=2))
    host = Host(engine)
    host.sell("F1")
    assert not host.send(0xC1).status.daily_report_required
    host.sell("F2")
    assert host.send(0xC1).status.daily_report_required
    engine.device.daily_report_done()
    assert not host.send(0xC1).status.daily_report_required


def test_daily_report_required_after_configured_hours(tmp_path: Path) -> None:
    engine = MCFEngine(tmp_path / "m.json", options=DeviceOptions(daily_report_every_hours=24))
    host = Host(engine)
    assert not host.send(0xC1).status.daily_report_required
    yesterday = (engine.device.now() - timedelta(hours=25)).strftime("%Y%m%d%H%M%S")
    engine.device.state = dataclasses.replace(engine.state, last_report_at=yesterday)
    assert host.send(0xC1).status.daily_report_required


def test_memory_low_and_full(tmp_path: Path) -> None:
    engine = MCFEngine(tmp_path / "m.json", provision=FiscalState.new(max_records=52))
    host = Host(engine)
    assert not host.send(0xC1).status.memory_low
    host.sell("F1")
    host.sell("F2")
    assert not host.send(0xC1).status.memory_low  # 50 left
    host.sell("F3")
    status = host.send(0xC1).status
    assert status.memory_low and not status.memory_full  # 49 left


def test_memory_full_refuses_new_invoices(tmp_path: Path) -> None:
    engine = MCFEngine(tmp_path / "m.json", provision=FiscalState.new(max_records=2))
    host = Host(engine)
    host.sell("F1")
    host.sell("F2")
    status = host.send(0xC1).status
    assert status.memory_full and status.memory_low
    answer = host.open_invoice("F3")
    assert answer.text == "E:MEMOIRE FISCALE PLEINE" and answer.status.command_forbidden


def test_memory_switches_on_the_switchboard(host: Host, faults: FaultSwitchboard) -> None:
    faults.set("memory_nearly_full", True)
    assert host.send(0xC1).status.memory_low
    faults.set("memory_full", True, clear_after=2)
    assert host.open_invoice().text == "E:MEMOIRE FISCALE PLEINE"  # C3h + C0h: 2 frames
    assert not host.send(0xC1).status.memory_full


# ------------------------------------------------------------------------------ credit notes
def test_credit_note_against_a_journal_invoice(host: Host, engine: MCFEngine) -> None:
    sig = host.sell("F1", price="2400")[7]
    assert host.open_credit_note(sig).text == "1,2,,,,,,"
    host.item("ARTICLE", "B", "16.00", "1000", "1000")
    answer = host.send(0x38, "1000.00,137.93")
    assert answer.text.startswith("R:1,2,FA,")
    assert (engine.state.fvc, engine.state.frc) == (1, 1)


def test_credit_note_with_unknown_reference_is_refused(host: Host, engine: MCFEngine) -> None:
    host.sell("F1")
    host.open_credit_note("ABCDABCDABCDABCDABCDABCD")
    host.item("ARTICLE", "B", "16.00", "100", "100")
    answer = host.send(0x38, "100.00,13.79")
    assert answer.text == "E:LA FACTURE DE REFERENCE EST INCONNUE"
    assert answer.status.invoice_open and engine.state.frc == 0


def test_credit_notes_may_not_exceed_the_original_in_total(host: Host) -> None:
    sig = host.sell("F1", price="2400")[7]
    host.open_credit_note(sig, fn="AV1")
    host.item("ARTICLE", "B", "16.00", "2500", "2500")
    assert host.send(0x38, "2500.00,344.83").text == (
        "E:LE MONTANT DE L'AVOIR DEPASSE CELUI DE LA FACTURE DE REFERENCE"
    )
    host.send(0x38, "C")
    host.open_credit_note(sig, fn="AV2")
    host.item("ARTICLE", "B", "16.00", "2000", "2000")
    assert host.send(0x38, "2000.00,275.86").text.startswith("R:")
    host.open_credit_note(sig, fn="AV3")
    host.item("ARTICLE", "B", "16.00", "500", "500")  # 2000 + 500 > 2400
    assert host.send(0x38, "500.00,68.97").text.startswith("E:LE MONTANT DE L'AVOIR DEPASSE")


def test_export_credit_note_must_refer_to_an_export_sale(host: Host) -> None:
    sig = host.sell("F1")[7]
    host.open_credit_note(sig, kind="EA")
    host.item("ARTICLE", "B", "16.00", "100", "100")
    assert host.send(0x38, "100.00,13.79").text == "E:LA FACTURE DE REFERENCE N'EST PAS DU BON TYPE"


def test_credit_note_references_survive_a_restart(host: Host, state_path: Path) -> None:
    sig = host.sell("F1", price="2400")[7]
    host2 = Host(MCFEngine(state_path))
    host2.open_credit_note(sig)
    host2.item("ARTICLE", "B", "16.00", "2400", "2400")
    assert host2.send(0x38, "2400.00,331.03").text.startswith("R:")


def test_slow_credit_server_answers_p_until_the_delay_passes(host: Host, faults: FaultSwitchboard, engine: MCFEngine) -> None:
    sig = host.sell("F1", price="2400")[7]
    faults.set("credit_server_delay_ms", 300)
    host.open_credit_note(sig, fn="AV1")
    host.item("ARTICLE", "B", "16.00", "1000", "1000")
    first = host.send(0x38, "1000.00,137.93")
    fields = first.text[2:].split(",")
    assert first.text.startswith("P:") and fields[:4] == ["SIM0000001-1", NIF, "AV1", "1000.00"]
    assert first.status.invoice_open and engine.state.frc == 0
    # The same SEQ again is looked at again (a P: answer is not final), still pending.
    assert host.send(0x38, "1000.00,137.93", seq=host.seq).text.startswith("P:")
    import time

    time.sleep(0.35)
    assert host.send(0x38, "1000.00,137.93").text.startswith("R:1,2,FA,")
    assert engine.state.frc == 1


def test_credit_server_down(host: Host, faults: FaultSwitchboard) -> None:
    sig = host.sell("F1")[7]
    faults.set("credit_server_down", True)
    host.open_credit_note(sig)
    host.item("ARTICLE", "B", "16.00", "100", "100")
    answer = host.send(0x38, "100.00,13.79")
    assert answer.text == "E:LA FACTURE D'AVOIR N'A PAS PU ETRE VERIFIEE POUR LE MOMENT^x2c; VEUILLEZ REESSAYER"


def test_sig_is_deterministic_per_device_and_secret(tmp_path: Path) -> None:
    a = FiscalState.new()
    b = FiscalState.new()
    assert a.secret != b.secret
    from simulator.sig import compute_sig

    fields = ["SIM0000001-1", NIF, "FV", "1", "1", "20260301122547", "F1", "10.00", "1.38"]
    assert compute_sig(a.secret_bytes, fields) == compute_sig(a.secret_bytes, fields)
    assert compute_sig(a.secret_bytes, fields) != compute_sig(b.secret_bytes, fields)
    assert compute_sig(a.secret_bytes, fields) != compute_sig(a.secret_bytes, fields[:-1] + ["1.39"])


def test_a_subtotal_too_long_for_one_frame_is_refused_not_crashed(host: Host) -> None:
    host.open_invoice()
    for group, rate in zip("ABCDEFGHIJKLMNOP", ["0.00", "16.00", "5.00", "0.00", "0.00", "16.00", "5.00"] + ["0.00"] * 7 + ["1.00", "1.00"]):
        assert host.item("X", group, rate, "99999999.99", "99999999.99").text.startswith("99999999.99")
    answer = host.send(0x33)
    assert answer.text == "E:LA REPONSE DEPASSE 200 OCTETS"
    assert answer.status.invoice_open


def test_unpaid_rest_is_recorded_as_cash(host: Host, engine: MCFEngine) -> None:
    host.open_invoice()
    host.item("ARTICLE", "B", "16.00", "2400", "2400")
    assert host.send(0x35, "M2000").text == "R-400"
    assert host.send(0x38, "2400.00,331.03").text.startswith("R:")
    entry = list(engine.store.entries(engine.state))[-1]
    assert entry.payments == [["M", "2000.00"], ["E", "400.00"]]
