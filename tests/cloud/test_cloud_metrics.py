"""The cloud's /metrics and health: counted as reconciliation answers, read from the database."""
from __future__ import annotations

import re

import yaml
from cloud_helpers import invoice_request

from tests.support import ROOT


def _value(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} {labels} not in /metrics")


async def _metrics(cloud) -> str:
    resp = await cloud.client.get("/metrics")
    assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/plain")
    return await resp.text()


async def test_reconciliation_results_rejections_flags_and_the_database(cloud):
    await cloud.outlet()
    agent = await cloud.enroll()
    cred = await cloud.credential(agent, block_size=10)
    good = [agent.seal(cred, n) for n in (cred.block_start, cred.block_start + 1)]
    await cloud.reconcile(agent, good)
    # Validly signed, but its totals do not add up: rejected, and the outlet flagged.
    forged = agent.seal(cred, cred.block_start + 2, tamper=lambda inv: inv["totals"].update(total="1.00"))
    answer = await cloud.reconcile(agent, [forged])
    assert answer["results"][0]["status"] == "rejected"
    text = await _metrics(cloud)
    assert _value(text, "stalela_cloud_reconciled_total", result="accepted") == 2
    assert _value(text, "stalela_cloud_reconciled_total", result="rejected") == 1
    reason = answer["results"][0]["reason"]
    assert _value(text, "stalela_cloud_rejections_total", reason=reason) == 1
    assert _value(text, "stalela_cloud_db_up") == 1
    assert _value(text, "stalela_cloud_db_latency_seconds") > 0
    assert sum(_value(text, "stalela_cloud_open_flags", reason=f["reason"]) for f in await cloud.flags("KIN-01")) >= 1
    assert "stalela_cloud_build_info{" in text and 'instance="' in text
    await cloud.post("/v1/seal", {"invoice": invoice_request().model_dump(mode="json")}, agent.headers, 201)
    assert _value(await _metrics(cloud), "stalela_cloud_online_seals_total") == 1
    health = await cloud.get("/v1/health")
    assert health["status"] == "ok" and health["database"] == {"up": True}


def test_every_metric_the_cloud_alert_rules_name_exists():
    rules = yaml.safe_load((ROOT / "docs" / "monitoring" / "cloud-alerts.yml").read_text())
    exprs = [r["expr"] for g in rules["groups"] for r in g["rules"]]
    named = {m for e in exprs for m in re.findall(r"\b(stalela_cloud_[a-z_]+)", e)}
    from cloud_stub.metrics import CloudMetrics
    from prometheus_client import generate_latest
    exported = generate_latest(CloudMetrics().registry).decode()
    declared = set(re.findall(r"^# TYPE (stalela_cloud_[a-z_]+) ", exported, re.M))
    # counters are exposed with _total; the TYPE line names the family
    families = declared | {d + "_total" for d in declared}
    assert named and named <= families, named - families


def test_the_cloud_alert_rules_parse_with_promtool():
    import shutil
    import subprocess

    import pytest
    if shutil.which("promtool") is None:
        pytest.skip("promtool not installed (Debian's prometheus package; .ci/run installs it)")
    res = subprocess.run(["promtool", "check", "rules", str(ROOT / "docs" / "monitoring" / "cloud-alerts.yml")],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
