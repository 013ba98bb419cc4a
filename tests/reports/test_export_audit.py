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


# ------------------------------------------------------------------- pinned issuer key
def _resign_as_a_forger(out) -> str:
    """Rewrite an export as someone without the cloud's issuer key would: alter an invoice,
    issue the credentials anew under an issuer key of their own (for an agent key of their own),
    re-seal and re-chain every invoice, and rewrite the manifest to match. Returns that key."""
    import hashlib

    from fiscal.protocol import GENESIS_HASH
    from fiscal.credential import BlockClosure, DelegatedCredential
    from fiscal.seal import apply_signature
    from fiscal.signing import generate_private_key, key_id, public_key_text

    issuer, agent = generate_private_key(), generate_private_key()
    issuer_pub = public_key_text(issuer)
    manifest = json.loads((out / "manifest.json").read_text("utf-8"))
    creds = {}
    for entry in manifest["credentials"]:
        fields = DelegatedCredential.model_validate(entry["credential"]).model_dump(
            exclude={"issuer_key_id", "signature"})
        fields["agent_public_key"] = public_key_text(agent)
        cred = DelegatedCredential.issue(issuer, key_id(issuer_pub), **fields)
        entry["credential"] = json.loads(cred.model_dump_json())
        if entry["closure"]:
            closure = BlockClosure.make(agent, cred.id, entry["closure"]["last_used"])
            entry["closure"] = json.loads(closure.model_dump_json())
        creds[cred.id] = cred
    prev: dict[str, str] = {}
    for chunk in manifest["chunks"]:
        path = out / chunk["file"]
        lines = []
        for raw in path.read_text("utf-8").splitlines():
            inv = json.loads(raw)
            key = f"{inv['mode']}:{inv['outlet_id']}"
            if key not in prev:
                inv["totals"]["total"] = "1.00"  # the point of forging
            inv["chain"]["prev_hash"] = prev.get(key, GENESIS_HASH)
            apply_signature(inv, agent, creds[inv["security"]["authority_id"]])
            prev[key] = inv["chain"]["hash"]
            manifest["chains"][key]["last_hash"] = inv["chain"]["hash"]
            lines.append(json.dumps(inv, ensure_ascii=False, separators=(",", ":")) + "\n")
        data = "".join(lines).encode("utf-8")
        path.write_bytes(data)
        chunk["sha256"] = hashlib.sha256(data).hexdigest()
    manifest["issuer_public_key"] = issuer_pub
    (out / "manifest.json").write_text(json.dumps(manifest, ensure_ascii=False, indent=2) + "\n", "utf-8")
    return issuer_pub


def _pinned_export(harness, tmp_path):
    harness.add_credential(harness.credential(1, 100))
    seal_in_process(harness.data_dir, [varied_request(i) for i in range(12)])
    out = tmp_path / "export"
    stalela("export", "--data", str(harness.data_dir), "--out", str(out), "--chunk-size", "5", check=True)
    return out


def test_verify_export_pinned_issuer_key_passes_a_genuine_export(harness, tmp_path):
    out = _pinned_export(harness, tmp_path)
    by_enrollment = stalela("verify", "--export", str(out), "--data", str(harness.data_dir))
    assert by_enrollment.returncode == 0, by_enrollment.stderr
    assert f"issuer key pinned from the enrollment in {harness.data_dir}" in by_enrollment.stdout
    assert "not pinned" not in by_enrollment.stderr
    # Run from inside the agent's folder, --data left at its default: that agent's key is pinned.
    import os
    import subprocess
    import sys

    from tests.support import python_path

    env = {k: v for k, v in os.environ.items() if k != "STALELA_DATA"}
    inside = subprocess.run([sys.executable, "-m", "agent", "verify", "--export", str(out)], capture_output=True,
                            text=True, cwd=harness.data_dir, env=dict(env, PYTHONPATH=python_path()))
    assert inside.returncode == 0, inside.stderr
    assert f"issuer key pinned from the enrollment in {harness.data_dir}" in inside.stdout
    by_option = stalela("verify", "--export", str(out), "--issuer-key", harness.issuer_pub,
                        "--data", str(tmp_path / "no-agent-here"))
    assert by_option.returncode == 0, by_option.stderr
    assert "issuer key pinned from --issuer-key" in by_option.stdout


def test_verify_export_resigned_under_another_key_fails_when_pinned(harness, tmp_path):
    out = _pinned_export(harness, tmp_path)
    forger = _resign_as_a_forger(out)
    # Checked only against itself, the forged export holds together: the gap pinning closes.
    unpinned = stalela("verify", "--export", str(out), "--data", str(tmp_path / "no-agent-here"))
    assert unpinned.returncode == 0, unpinned.stderr
    assert "issuer key not pinned" in unpinned.stdout and "note: issuer key not pinned" in unpinned.stderr
    key_file = tmp_path / "issuer.txt"
    key_file.write_text(harness.issuer_pub + "\n")
    for pin in (["--data", str(harness.data_dir)],
                ["--issuer-key", harness.issuer_pub],
                ["--issuer-key", str(key_file)],
                ["--issuer-key", str(harness.data_dir / "enrollment.json")]):
        res = stalela("verify", "--export", str(out), *pin)
        assert res.returncode == 1, (pin, res.stdout, res.stderr)
        assert (f"FAULT: manifest.json: names issuer key {forger}, not the pinned issuer key "
                f"{harness.issuer_pub}") in res.stderr, pin
        assert "FAULT: credential DC-KIN-001-1: not signed by the pinned issuer key" in res.stderr
        assert "do not accept it" in res.stderr and "Traceback" not in res.stderr
        assert "OK" not in res.stdout


def test_verify_export_bad_issuer_key_is_a_clean_error(harness, tmp_path):
    out = _pinned_export(harness, tmp_path)
    for bad in ("not-a-key", "AAAA", str(tmp_path)):
        res = stalela("verify", "--export", str(out), "--issuer-key", bad)
        assert res.returncode == 2, res.stderr
        assert "--issuer-key" in res.stderr and "Ed25519 public key" in res.stderr
        assert "Traceback" not in res.stderr
    res = stalela("verify", "--data", str(harness.data_dir), "--issuer-key", harness.issuer_pub)
    assert res.returncode == 2 and "--issuer-key goes with --export" in res.stderr


def test_issuer_key_accepted_forms(harness, tmp_path):
    from cryptography.hazmat.primitives import serialization

    from agent.export import issuer_key_from
    from fiscal.signing import load_public_key

    pem = load_public_key(harness.issuer_pub).public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    forms = {"pem": pem, "issuer.json": json.dumps({"public_key": harness.issuer_pub, "algorithm": "Ed25519"})}
    for name, text in forms.items():
        (tmp_path / name).write_text(text)
        assert issuer_key_from(str(tmp_path / name)) == harness.issuer_pub
    assert issuer_key_from(f"  {harness.issuer_pub}\n") == harness.issuer_pub


def _rewrite_chain(out, seal) -> None:
    """Re-seal every invoice of a one-chain export with `seal(inv)`, re-chain, fix the manifest."""
    import hashlib

    from fiscal.protocol import GENESIS_HASH

    manifest = json.loads((out / "manifest.json").read_text("utf-8"))
    [info] = manifest["chains"].values()
    prev = GENESIS_HASH
    for chunk in manifest["chunks"]:
        path = out / chunk["file"]
        lines = []
        for raw in path.read_text("utf-8").splitlines():
            inv = json.loads(raw)
            inv["chain"]["prev_hash"] = prev
            seal(inv)
            prev = inv["chain"]["hash"]
            key = f"{inv['mode']}:{inv['outlet_id']}"
            lines.append(json.dumps(inv, ensure_ascii=False, separators=(",", ":")) + "\n")
        data = "".join(lines).encode("utf-8")
        path.write_bytes(data)
        chunk["sha256"] = hashlib.sha256(data).hexdigest()
    manifest["chains"] = {key: {**info, "last_hash": prev}}
    (out / "manifest.json").write_text(json.dumps(manifest, ensure_ascii=False, indent=2) + "\n", "utf-8")


def test_verify_export_checks_cloud_seals_under_the_issuer_key(harness, tmp_path):
    from fiscal.seal import apply_signature, chain_hash

    out = _pinned_export(harness, tmp_path)

    def as_cloud_sealed(inv):  # what the cloud's own seal looks like: the issuer signs, no credential
        inv["mode"] = "cloud"
        apply_signature(inv, harness.issuer, None)

    _rewrite_chain(out, as_cloud_sealed)
    genuine = stalela("verify", "--export", str(out), "--issuer-key", harness.issuer_pub)
    assert genuine.returncode == 0, genuine.stderr

    altered = []

    def alter_first(inv):  # a changed amount, the chain hashes recomputed, the seal left as it was
        if not altered:
            inv["totals"]["total"] = "1.00"
            altered.append(inv["id"])
        inv["chain"]["hash"] = chain_hash(inv)

    _rewrite_chain(out, alter_first)
    res = stalela("verify", "--export", str(out), "--issuer-key", harness.issuer_pub)
    assert res.returncode == 1, res.stdout
    assert f"(invoice {altered[0]}, fiscal number 1, authority" in res.stderr
    assert "signature does not match the invoice content" in res.stderr
