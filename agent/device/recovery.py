"""Exactly-once across crashes: settle every invoice left in flight on the MCF.

An intent row (`device_intents`) is written durably before C0h and removed in the transaction
that records the device's answer. A row still there means the agent crashed, or lost the link,
somewhere between C0h and recording the 38h answer. Before anything else is sent to the device:

* C1h; if its last invoice (DFN) is the intent's FN (and it has a code, DFS), the invoice was
  normalized: its security elements are recorded from C1h (DFDT, DFT, DFS, DFN, TC, MID, NIF and
  FC, see below) exactly as the device reports them, and the POS's retry of that request_id is
  answered with it;
* otherwise it was not normalized: an invoice still open on the device is cancelled (38h C) and
  the intent removed, so the retry seals anew.

FC: C1h has no per-type counter (FVC counts FV+FT+EV+ET, FRC FA+EA). The C0h answer of the
invoice carries the FC/TC it gets once normalized; the signer adds it to the intent right after
C0h. When the intent has it and its TC is C1h's TC, FC is exact; otherwise FVC/FRC is used and
logged as approximate (exact while the device only ever normalized FV and FA).
"""
from __future__ import annotations

import json
import logging
import sqlite3
from dataclasses import dataclass
from typing import Any

from drivers.usb_fiscal_memory.client import MCFClient
from drivers.usb_fiscal_memory.commands import InvoiceOpened, McfStatus, NormalizedInvoice

from ..journal import Journal, SealJob, SealOutcome
from ..store import device as intents_store

log = logging.getLogger("stalela.device")


@dataclass
class Resolution:
    request_id: str
    fn: str
    outcome: str  # "recorded" | "not_normalized"
    sealed: SealOutcome | None = None


def answer_dict(result: NormalizedInvoice) -> dict[str, Any]:
    """What Journal.record_device_seal stores: the 38h elements, unchanged."""
    return {"fc": result.fc, "tc": result.tc, "ft": result.ft, "dt": result.dt, "mid": result.mid,
            "nif": result.nif, "fn": result.fn, "sig": result.sig}


def intent_rows(conn: sqlite3.Connection) -> list[sqlite3.Row]:
    return intents_store.intents(conn)


def job_of(row: sqlite3.Row) -> tuple[SealJob, InvoiceOpened | None]:
    data = json.loads(row["job"])
    job = SealJob(request=data["request"], fingerprint=row["fingerprint"], lines=data["lines"],
                  totals=data["totals"])
    opened = data.get("opened")
    return job, (InvoiceOpened(int(opened["fc"]), int(opened["tc"])) if opened else None)


def record(journal: Journal, job: SealJob, result: NormalizedInvoice) -> SealOutcome:
    answer = answer_dict(result)
    return journal.run_in_writer(lambda conn: journal.record_device_seal(conn, job, answer)).result()


def delete_intent(journal: Journal, request_id: str) -> None:
    journal.run_in_writer(
        lambda conn: intents_store.delete_intent(conn, request_id)).result()


def resolve_intents(client: MCFClient, journal: Journal, conn: sqlite3.Connection,
                    mcf: McfStatus | None = None) -> list[Resolution]:
    """Settle every intent against the device (one C1h, at most one 38h C). Link errors propagate
    (the intents stay for the next attempt)."""
    rows = intent_rows(conn)
    if not rows:
        return []
    if mcf is None:
        mcf = client.status()
    done: list[Resolution] = []
    for row in rows:
        job, opened = job_of(row)
        result = MCFClient.last_result_in(mcf, row["fn"], opened)
        if result is not None:
            if not result.fc_exact:
                log.warning("FC recovered from C1h FVC/FRC (approximate for FT/EV/ET devices)",
                            extra={"event": "device.fc_approximate", "fn": row["fn"], "fc": result.fc})
            sealed = record(journal, job, result)
            log.info("device invoice recovered", extra={"event": "device.intent_recovered",
                                                        "request_id": row["request_id"], "tc": result.tc})
            done.append(Resolution(row["request_id"], row["fn"], "recorded", sealed))
        else:
            delete_intent(journal, row["request_id"])
            log.info("device invoice was not normalized; intent dropped",
                     extra={"event": "device.intent_dropped", "request_id": row["request_id"]})
            done.append(Resolution(row["request_id"], row["fn"], "not_normalized"))
    sta = client.last_status
    if sta is not None and sta.invoice_open:
        cancelled = client.cancel()
        log.info("invoice left open on the device cancelled",
                 extra={"event": "device.stale_invoice_cancelled", "answer": cancelled.text})
    return done
