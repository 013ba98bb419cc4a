"""Reconciliation with the verifier's worker processes (cloud_stub/verifier.py).

What must hold: the same outcomes (status, reason, detail, ledger order) and the same ledger as
the checks in the service's own process, for every kind of invoice and every body; and nothing
lost or doubled when a worker dies. Real worker processes, real SQLite, no mocks: each
comparison runs the same batch on two copies of one cloud's data folder.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import sqlite3
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from fiscal.protocol import GENESIS_HASH
from fiscal.models import InvoiceRequest
from fiscal.seal import chain_hash
from cloud_stub import bodies
from cloud_stub.config import CloudConfig
from cloud_stub.errors import CloudError
from cloud_stub.service import CloudService
from tests.support import CloudProcess

from cloud_helpers import Agent, Clock, Harness, invoice_request, new_key, unsigned_invoice

MID = "AB01000001"


# -- helpers ---------------------------------------------------------------------------------


def clone(service: CloudService, dest: Path) -> Path:
    """A consistent copy of a running cloud's data folder (SQLite backup, issuer key, admin token)."""
    dest.mkdir(mode=0o700)
    src, dst = sqlite3.connect(service.config.db_path), sqlite3.connect(dest / "cloud.sqlite3")
    with dst:
        src.backup(dst)
    src.close()
    dst.close()
    for name in ("issuer-key.pem", "admin.token"):
        shutil.copy2(service.config.data_dir / name, dest / name)
    return dest


def open_cloud(data_dir: Path, clock: Clock, workers: int, **settings: Any) -> CloudService:
    return CloudService(CloudConfig(data_dir=data_dir, audit_interval=0, gap_grace=timedelta(0), clock=clock,
                                    verify_workers=workers, **settings))


def tables(service: CloudService) -> dict[str, list]:
    """Everything reconciliation writes, row by row."""
    conn = sqlite3.connect(service.config.db_path)
    try:
        return {name: conn.execute(f"SELECT * FROM {name} ORDER BY 1").fetchall()
                for name in ("ledger", "rejections", "flags", "devices", "credentials")}
    finally:
        conn.close()


def compact(invoices: list) -> bytes:
    """The body an agent's outbox sends: stored JSON texts joined."""
    return ('{"invoices":[' + ",".join(json.dumps(i, ensure_ascii=False, separators=(",", ":"))
                                       for i in invoices) + "]}").encode("utf-8")


def spaced(invoices: list) -> bytes:
    """JSON whitespace everywhere (cut with the regular expression, not the literal)."""
    return json.dumps({"invoices": invoices}, indent=1, ensure_ascii=False).encode("utf-8")


def first_not_object(invoices: list) -> bytes:
    """Not cut at all (the first invoice is not an object): parsed whole, then sent as JSON."""
    return compact(["not an invoice", *invoices])


def outcome(service: CloudService, agent_row: dict, raw: bytes) -> Any:
    """The answer, or the refusal of the whole body (kind, status, detail)."""
    try:
        return service.reconcile_upload(agent_row, raw)
    except CloudError as exc:
        return ("refused", exc.kind, exc.status, exc.detail)


def device_invoice(outlet: dict, mid: str, number: int, prev_hash: str, when) -> dict:
    invoice = unsigned_invoice(mode="device", outlet=outlet, authority_id=mid, number=number,
                               timestamp=when, prev_hash=prev_hash)
    sec = invoice["security"]
    sec["code"] = "D357MYBKF6QSMSD2XWSEFT6S"
    sec["qr_payload"] = f"RDCDEF01;{mid};{sec['code']};{outlet['merchant_nif']};20260301122547"
    sec["signature"] = None
    invoice["chain"]["hash"] = chain_hash(invoice)
    return invoice


async def mixed_batch(cloud: Harness) -> tuple[Agent, list]:
    """A cloud with history, and a batch holding every kind of invoice reconciliation meets."""
    await cloud.outlet()
    await cloud.outlet("KIN-02")
    agent = await cloud.enroll()
    other = await cloud.enroll("KIN-02")
    cred = await cloud.credential(agent, block_size=400)
    other_cred = await cloud.credential(other)
    await cloud.post("/v1/admin/outlets/KIN-01/devices", {"mid": MID, "nif": "A1234567B"}, cloud.admin, 201)
    earlier = [agent.seal(cred, n) for n in (1, 2, 3)]
    await cloud.reconcile(agent, earlier)  # already in the ledger: duplicates and conflicts
    sealed = await cloud.post("/v1/seal", {"invoice": invoice_request().model_dump(mode="json")}, agent.headers, 201)
    revoked = await cloud.credential(agent, block_size=10)
    await cloud.post(f"/v1/admin/credentials/{revoked.id}/revoke", {"reason": "box stolen"}, cloud.admin, 200)

    forger, _ = new_key()
    numbers = iter(range(4, 400))
    batch: list = []

    def valid(count: int) -> None:
        batch.extend(agent.seal(cred, next(numbers)) for _ in range(count))

    valid(40)
    batch.append(agent.seal(cred, 44, key=forger, advance_chain=False))  # forged signature
    tampered = agent.seal(cred, 44, advance_chain=False)
    tampered["totals"]["total"] = "1.00"  # content changed after sealing, hash recomputed
    tampered["chain"]["hash"] = chain_hash(tampered)
    batch.append(tampered)
    batch.append(agent.seal(cred, 500, advance_chain=False))  # outside the block
    batch.append(agent.seal(cred, 44, when=cred.not_after + timedelta(seconds=1), advance_chain=False))
    batch.append(agent.seal(revoked, revoked.block_start, advance_chain=False))  # revoked credential
    batch.append(earlier[1])  # duplicate of the ledger
    batch.append(agent.seal(cred, 2, prev_hash=GENESIS_HASH, request=invoice_request("2320.00"),
                            advance_chain=False))  # conflict: number 2 with other content
    batch.append(device_invoice(agent.outlet, MID, 70, GENESIS_HASH, cloud.clock.now))  # device-sealed
    batch.append(device_invoice(agent.outlet, "AB09999999", 1, GENESIS_HASH, cloud.clock.now))  # unregistered
    good = agent.seal(cred, 1, advance_chain=False)
    huge, negative, decimal = (json.loads(json.dumps(good)) for _ in range(3))
    huge["security"]["fiscal_number"] = 2**70
    negative["security"]["fiscal_number"] = -1
    decimal["security"]["fiscal_number"] = 1.0
    batch += ["nope", {"id": "x"}, 7, None, [], huge, negative, decimal]  # malformed
    valid(30)
    batch.append(batch[-1])  # the same invoice twice in one batch: a duplicate of itself
    batch.append(sealed)  # a cloud-sealed invoice: acknowledged
    forged_cloud = json.loads(json.dumps(sealed))
    forged_cloud["security"]["fiscal_number"] = 399
    forged_cloud["chain"]["hash"] = chain_hash(forged_cloud)
    batch.append(forged_cloud)
    batch.append(agent.seal(cred.model_copy(update={"id": "DC-NOTISSUED"}), 390, advance_chain=False))
    batch.append(other.seal(other_cred, other_cred.block_start))  # another outlet's invoice
    edited = agent.seal(cred, 44, advance_chain=False)
    edited["invoice_number"] = "FAC-EDITED"  # hash not recomputed
    batch.append(edited)
    batch.append(agent.seal(cred, 391, prev_hash="ab" * 32, advance_chain=False))  # chain break
    # Validly signed, but the amounts are not the tax engine's; a credit note without its original.
    batch.append(agent.seal(cred, 392, advance_chain=False,
                            tamper=lambda inv: inv["totals"].update(total="1.00")))
    batch.append(agent.seal(cred, 393, advance_chain=False,
                            request=invoice_request("10.00", "FA", reference="X" * 24)))
    # A credit note against an invoice earlier in this batch: accepted.
    original = batch[10]["security"]["code"]
    batch.append(agent.seal(cred, next(numbers), request=invoice_request("10.00", "FA", reference=original)))
    # Valid but not vouched for by the fast path (a USD rate): the model's path, in the workers.
    usd = InvoiceRequest.model_validate({**invoice_request().model_dump(mode="json"),
                                         "usd_rate": {"rate": "2850.00", "date": "2026-01-05"}})
    batch.append(agent.seal(cred, next(numbers), request=usd))
    synced = agent.seal(cred, next(numbers))
    batch.append(dict(synced, sync={"state": "pending"}))  # the agent's own state is not sealed
    valid(60)
    return agent, batch


# -- the same outcomes and ledger --------------------------------------------------------------


@pytest.mark.parametrize("layout", [compact, spaced, first_not_object], ids=lambda f: f.__name__)
async def test_workers_give_the_same_outcomes_and_ledger(cloud, tmp_path, layout):
    agent, batch = await mixed_batch(cloud)
    raw = layout(batch)
    here = open_cloud(clone(cloud.service, tmp_path / "here"), cloud.clock, workers=0)
    there = open_cloud(clone(cloud.service, tmp_path / "there"), cloud.clock, workers=2)
    try:
        agent_row = here.authenticate(agent.token)
        expected = here.reconcile_upload(agent_row, raw)
        answer = there.reconcile_upload(agent_row, raw)
        assert answer == expected
        assert tables(there) == tables(here)
        assert there.verifier.batches == 1 and there.verifier.chunks_here == 0  # the workers did it
        reasons = {r.get("reason") for r in expected["results"]}
        assert {None, "bad_signature", "outside_block", "outside_window", "credential_revoked", "conflict",
                "invalid", "not_sealed_by_cloud", "unknown_credential", "wrong_outlet",
                "hash_mismatch", "chain_break", "totals_mismatch", "unknown_original"} <= reasons
        # + 3: the credit note and the two devices' (the unregistered one's flagged)
        assert expected["duplicate"] == 3 and expected["accepted"] == 40 + 30 + 60 + 2 + 3
        assert [r.get("flag") for r in expected["results"]].count("unregistered_device") == 1
        assert there.verify_ledger("KIN-01")["valid"]
    finally:
        here.close()
        there.close()


async def test_http_answer_is_the_same_with_workers(cloud, tmp_path):
    """Through the HTTP layer too (the handler hands the raw body to the service)."""
    from aiohttp.test_utils import TestClient, TestServer
    from cloud_stub.app import init_app

    agent, batch = await mixed_batch(cloud)
    answers = []
    for name, workers in (("here", 0), ("there", 2)):
        service = open_cloud(clone(cloud.service, tmp_path / name), cloud.clock, workers=workers)
        async with TestClient(TestServer(init_app(service.config, service), host="127.0.0.1")) as client:
            resp = await client.post("/v1/reconcile", data=compact(batch),
                                     headers={**agent.headers, "Content-Type": "application/json"})
            answers.append((resp.status, await resp.json()))
        service.close()
    assert answers[0] == answers[1] and answers[0][0] == 200


async def test_a_cut_inside_an_invoice_falls_back_to_a_whole_parse(cloud, tmp_path):
    """Text that looks like a boundary between invoices inside an invoice: the cut is caught."""
    await cloud.outlet()
    agent = await cloud.enroll()
    cred = await cloud.credential(agent, block_size=300)
    batch = []
    for n in range(1, 201):
        invoice = agent.seal(cred, n)
        if n % 2:  # an unknown field holding `},{"id":` twice: invalid, and a false boundary
            invoice = dict(invoice, extra=[{"id": 1}, {"id": 2}, {"id": 3}])
            agent.prev_hash = invoice["chain"]["prev_hash"]  # not accepted: the chain stays
        batch.append(invoice)
    raw = compact(batch)
    upload = bodies.split_upload(raw, 8, 1, 1000)
    assert upload is not None and upload.count > len(batch)  # false boundaries were found
    here = open_cloud(clone(cloud.service, tmp_path / "here"), cloud.clock, workers=0)
    there = open_cloud(clone(cloud.service, tmp_path / "there"), cloud.clock, workers=2, chunks_per_worker=8)
    try:
        agent_row = here.authenticate(agent.token)
        expected = here.reconcile_upload(agent_row, raw)
        assert there.reconcile_upload(agent_row, raw) == expected
        assert tables(there) == tables(here)
        assert expected["accepted"] == 100 and expected["rejected"] == 100
    finally:
        here.close()
        there.close()


@pytest.mark.parametrize("case", ["bad_json_inside", "bad_utf8_inside", "long_number", "deep", "too_many",
                                  "too_many_undercounted", "empty", "extra_key", "lone_surrogate",
                                  "paired_surrogate"])
async def test_bad_bodies_get_the_same_refusal_and_change_nothing(cloud, tmp_path, case):
    await cloud.outlet()
    agent = await cloud.enroll()
    cred = await cloud.credential(agent, block_size=300)
    invoices = [agent.seal(cred, n) for n in range(1, 151)]
    raw = compact(invoices)
    settings: dict[str, Any] = {}
    if case == "bad_json_inside":
        at = raw.index(b'"invoice_number":', len(raw) // 2)  # a colon missing, mid-body
        raw = raw[:at] + b'"invoice_number" ' + raw[at + 17:]
    elif case == "bad_utf8_inside":
        at = raw.index(b'"invoice_number":"', len(raw) // 2) + 18
        raw = raw[:at] + b"\xff" + raw[at:]
    elif case == "long_number":
        at = raw.index(b'"fiscal_number":', len(raw) // 2) + 16
        raw = raw[:at] + b"9" * 5000 + raw[at:]
    elif case == "deep":
        at = raw.index(b'"client":', len(raw) // 2) + 9
        raw = raw[:at] + b"[" * 100_000 + b"]" * 100_000 + b',"x":' + raw[at:]
    elif case == "too_many":
        settings["max_batch"] = 100
    elif case == "too_many_undercounted":  # some separators with spaces: counted short, then refused
        settings["max_batch"] = 100
        raw = raw.replace(b'},{"id":', b'}, {"id":', 60)
    elif case == "empty":
        raw = b'{"invoices":[]}'
    elif case == "extra_key":
        raw = raw[:-1] + b',"more":1}'
    elif case == "lone_surrogate":  # the whole body is refused
        raw = raw.replace(b'"JUS"', b'"J\\ud800S"', 1)
    elif case == "paired_surrogate":  # fine JSON, parsed whole; that one invoice's content changed
        raw = raw.replace(b'"JUS"', b'"J\\ud83d\\ude00S"', 1)
    here = open_cloud(clone(cloud.service, tmp_path / "here"), cloud.clock, workers=0, **settings)
    there = open_cloud(clone(cloud.service, tmp_path / "there"), cloud.clock, workers=2, **settings)
    try:
        agent_row = here.authenticate(agent.token)
        before = tables(here)
        expected = outcome(here, agent_row, raw)
        assert outcome(there, agent_row, raw) == expected
        assert tables(there) == tables(here)
        if case == "paired_surrogate":
            assert (expected["accepted"], expected["rejected"]) == (0, 150)  # hash, then chain break
        else:
            assert expected[0] == "refused" and expected[2] < 500, expected
            assert tables(there) == before  # nothing written
    finally:
        here.close()
        there.close()


# -- a worker lost ---------------------------------------------------------------------------------


async def test_worker_killed_mid_batch_loses_and_doubles_nothing(cloud, tmp_path, caplog):
    await cloud.outlet()
    agent = await cloud.enroll()
    cred = await cloud.credential(agent, block_size=2000)
    invoices = [agent.seal(cred, n) for n in range(1, 1201)]
    service = open_cloud(clone(cloud.service, tmp_path / "there"), cloud.clock, workers=2, chunks_per_worker=8)
    pool = service.verifier
    try:
        agent_row = service.authenticate(agent.token)
        answers: list[dict] = []
        # Kill a worker as soon as a batch is under way; try again on the next batch should the
        # kill come too late to hit one (the batch is then simply done by the workers).
        for attempt in range(3):
            part = invoices[attempt * 400:(attempt + 1) * 400]
            started = pool.batches
            thread = threading.Thread(target=lambda p=part: answers.append(
                service.reconcile_upload(agent_row, compact(p))))
            caplog.clear()
            with caplog.at_level(logging.WARNING, logger="stalela.cloud"):
                thread.start()
                while pool.batches == started and thread.is_alive():
                    time.sleep(0.0005)
                victim = pool.pids()[0]  # (replaced, on a retry, if an earlier kill came late)
                os.kill(victim, signal.SIGKILL)
                thread.join(60)
            assert answers[-1]["accepted"] == len(part), answers[-1]
            if pool.chunks_here:
                break
        assert pool.lost >= 1 and pool.chunks_here >= 1
        lost = [r.fields for r in caplog.records
                if getattr(r, "event", None) == "verifier.worker_lost" and r.fields["when"] != "between batches"]
        assert [f["pid"] for f in lost] == [victim]  # one structured line
        assert victim not in pool.pids() and all(pool.pids())  # replaced
        # The replacement works: the rest of the backlog, all by the workers.
        here_before = pool.chunks_here
        rest = invoices[(attempt + 1) * 400:]
        answer = service.reconcile_upload(agent_row, compact(rest))
        assert answer["accepted"] == len(rest) and pool.chunks_here == here_before
        check = service.verify_ledger("KIN-01")
        assert check == {"outlet_id": "KIN-01", "entries": 1200, "archived": 0, "valid": True, "problems": []}
        numbers = [row[7] for row in tables(service)["ledger"]]  # fiscal_number
        assert numbers == list(range(1, 1201))  # each once, in order
    finally:
        service.close()


async def test_worker_killed_between_batches_is_replaced_before_the_next(cloud, tmp_path, caplog):
    await cloud.outlet()
    agent = await cloud.enroll()
    cred = await cloud.credential(agent, block_size=500)
    invoices = [agent.seal(cred, n) for n in range(1, 201)]
    service = open_cloud(clone(cloud.service, tmp_path / "there"), cloud.clock, workers=2)
    pool = service.verifier
    try:
        agent_row = service.authenticate(agent.token)
        assert service.reconcile_upload(agent_row, compact(invoices[:100]))["accepted"] == 100
        victim = pool.pids()[1]
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while _running(victim) and time.monotonic() < deadline:
            time.sleep(0.01)
        with caplog.at_level(logging.WARNING, logger="stalela.cloud"):
            assert service.reconcile_upload(agent_row, compact(invoices[100:]))["accepted"] == 100
        # The forkserver reports a death a moment later: the loss is seen before the batch (the
        # worker is replaced first) or at the first chunk sent to it (checked here instead).
        lost = [r.fields["when"] for r in caplog.records if getattr(r, "event", None) == "verifier.worker_lost"]
        assert lost in (["between batches"], ["sending a chunk"], ["waiting for an answer"])
        assert victim not in pool.pids() and all(pool.pids())
        assert service.verify_ledger("KIN-01")["entries"] == 200
    finally:
        service.close()


def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_workers_go_when_the_cloud_is_killed(tmp_path):
    """`stalela cloud serve --workers 2`: SIGKILL the service, and its workers leave too."""
    cloud = CloudProcess(tmp_path / "cloud")
    cloud.start(30, "--workers", "2")
    try:
        helpers = _descendants(cloud.proc.pid)  # the forkserver and the two workers
        assert len(helpers) >= 3
        cloud.kill()
        deadline = time.monotonic() + 15
        while any(_running(p) for p in helpers) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(_running(p) for p in helpers)
    finally:
        cloud.stop()


# -- cutting a body ----------------------------------------------------------------------------------


def test_split_upload_cuts_between_invoices_and_reads_the_signers():
    invoices = [{"id": f"I-{n}", "security": {"authority_id": f"DC-{n % 3}"}, "n": "},{\"id\":"}
                for n in range(100)]
    raw = compact(invoices)
    upload = bodies.split_upload(raw, 8, 64, 1000)
    assert upload is not None and upload.count == 100 and len(upload.chunks) == 8
    assert [i for c in upload.chunks for i in json.loads(c)] == invoices
    assert upload.credential_ids == {"DC-0", "DC-1", "DC-2"}
    spaced_upload = bodies.split_upload(spaced(invoices), 8, 64, 1000)
    assert [i for c in spaced_upload.chunks for i in json.loads(c)] == invoices
    assert spaced_upload.credential_ids == {"DC-0", "DC-1", "DC-2"}


@pytest.mark.parametrize("raw", [
    b'{"invoices":[]}', b'[{"id":1}]', b'{"other":[{"id":1},{"id":2}]}', b'{"invoices":[{"id":1},{"id":2}]',
    b'{"invoices":[{"id":"\\ud800"},{"id":2}]}', b'\xef\xbb\xbf{"invoices":[{"id":1},{"id":2}]}',
    b'{"invoices":[1,2,3]}',
], ids=["empty", "array", "other_key", "unclosed", "surrogate", "bom", "no_objects"])
def test_split_upload_leaves_odd_bodies_to_the_whole_parse(raw):
    assert bodies.split_upload(raw, 4, 1, 1000) is None


def test_split_upload_leaves_small_and_large_batches_alone():
    raw = compact([{"id": n} for n in range(10)])
    assert bodies.split_upload(raw, 4, 11, 1000) is None
    assert bodies.split_upload(raw, 4, 1, 9) is None
    assert bodies.split_upload(raw, 4, 10, 10) is not None
