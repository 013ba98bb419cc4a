"""Audit export: chunked JSON Lines + manifest, verified offline; a modified chunk is named."""
from __future__ import annotations

import json

import pytest

from tests.reports.helpers import seal_in_process, stalela, varied_request


def _export_and_verify(harness, tmp_path, n: int, chunk: int) -> None:
    harness.add_credential(harness.credential(1, n // 2))
    harness.add_credential(harness.credential(n // 2 + 1, n + 100))
    seal_in_process(harness.data_dir, [varied_request(i) for i in range(n)])
    stalela("report", "z", "--data", str(harness.data_dir), check=True)
    seal_in_process(harness.data_dir, [varied_request(n + i) for i in range(5)])
    stalela("report", "z", "--data", str(harness.data_dir), check=True)
    out = tmp_path / "export"
    res = stalela("export", "--data", str(harness.data_dir), "--out", str(out), "--chunk-size", str(chunk), check=True)
    total = n + 5
    assert f"exported {total} invoices" in res.stdout and "exporting" in res.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    chunks = -(-total // chunk)
    assert manifest["counts"] == {"invoices": total, "z_reports": 2, "chunks": chunks}
    assert [c["file"] for c in manifest["chunks"]] == [f"chunk-{i:05d}.jsonl" for i in range(1, chunks + 1)]
    assert manifest["merchant_nif"] == "A1234567B" and manifest["issuer_public_key"] == harness.issuer_pub
    assert len(manifest["credentials"]) == 2
    chain = manifest["chains"]["delegated:KIN-001"]
    assert (chain["count"], chain["first_number"], chain["last_number"]) == (total, 1, total)
    # Each line is the stored invoice's JSON text, byte for byte (stored compressed).
    from agent.store.bodies import unpack
    conn = harness.db()
    stored = unpack(conn.execute("SELECT body FROM invoices ORDER BY seq LIMIT 1").fetchone()[0])
    conn.close()
    assert (out / "chunk-00001.jsonl").read_text("utf-8").split("\n")[0] == stored

    res = stalela("verify", "--export", str(out))
    assert res.returncode == 0, res.stderr
    assert f"{total} invoices in {chunks} chunks, 2 Z reports" in res.stdout

    # Modify one amount in the third chunk: verify names the chunk (and the invoice).
    target = out / "chunk-00003.jsonl"
    lines = target.read_text("utf-8").split("\n")
    inv = json.loads(lines[10])
    inv["totals"]["total"] = "1.00"
    lines[10] = json.dumps(inv, ensure_ascii=False, separators=(",", ":"))
    target.write_text("\n".join(lines), "utf-8")
    res = stalela("verify", "--export", str(out))
    assert res.returncode == 1
    assert "chunk-00003.jsonl: SHA-256 differs from the manifest" in res.stderr
    assert f"chunk-00003.jsonl line 11 (invoice {inv['id']}" in res.stderr
    assert "chunk-00001" not in res.stderr and "chunk-00002" not in res.stderr


def test_export_of_5000_invoices_verifies_offline(harness, tmp_path):
    _export_and_verify(harness, tmp_path, 5000, 1000)


@pytest.mark.slow
def test_export_of_100000_invoices_verifies_offline(harness, tmp_path):
    _export_and_verify(harness, tmp_path, 100_000, 10_000)


def test_export_errors_are_clean(harness, tmp_path):
    harness.add_credential(harness.credential(1, 10))
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    res = stalela("export", "--data", str(harness.data_dir), "--out", str(tmp_path / "full"))
    assert res.returncode != 0 and "not empty" in res.stderr and "Traceback" not in res.stderr
    res = stalela("verify", "--export", str(tmp_path / "nothing"))
    assert res.returncode != 0 and "no audit export" in res.stderr and "Traceback" not in res.stderr


def test_period_export_and_z_tampering_in_an_export(harness, tmp_path):
    harness.add_credential(harness.credential(1, 100))
    seal_in_process(harness.data_dir, [varied_request(i) for i in range(20)])
    stalela("report", "z", "--data", str(harness.data_dir), check=True)
    from datetime import datetime
    from zoneinfo import ZoneInfo
    today = datetime.now(ZoneInfo("Africa/Kinshasa")).date().isoformat()
    out = tmp_path / "day"
    stalela("export", "--data", str(harness.data_dir), "--out", str(out), "--from", today, "--to", today, check=True)
    assert stalela("verify", "--export", str(out)).returncode == 0
    empty = tmp_path / "old"
    res = stalela("export", "--data", str(harness.data_dir), "--out", str(empty), "--from", "2020-01-01",
                  "--to", "2020-01-31", check=True)
    assert "exported 0 invoices" in res.stdout
    assert stalela("verify", "--export", str(empty)).returncode == 0
    z = out / "z-reports.jsonl"
    body = json.loads(z.read_text())
    body["totals"]["count"] = 99
    z.write_text(json.dumps(body) + "\n")
    res = stalela("verify", "--export", str(out))
    assert res.returncode == 1 and "z-reports.jsonl: SHA-256 differs" in res.stderr and "Z report 1" in res.stderr
