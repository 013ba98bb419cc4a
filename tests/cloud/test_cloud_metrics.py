"""The cloud's /metrics and health: counted as reconciliation answers, read from the database."""
from __future__ import annotations

import re

import yaml
from cloud_helpers import invoice_request
from prometheus_client.parser import text_string_to_metric_families

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


def _last_seen(text: str) -> dict[str, tuple[str, float]]:
    """outlet -> (merchant, unix time) of stalela_cloud_outlet_last_seen_timestamp_seconds."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "stalela_cloud_outlet_last_seen_timestamp_seconds":
                out[s.labels["outlet"]] = (s.labels["merchant"], s.value)
    return out


async def test_each_outlet_reports_when_it_was_last_heard_from(cloud):
    """The silent-outlet alert's gauge: an outlet never heard from has no series (an outlet
    created before its box is installed must not page anyone); a credential, then an upload,
    move it to the moment the cloud recorded them."""
    await cloud.outlet("KIN-01", nif="A1234567B")
    await cloud.outlet("KIN-02", nif="A7654321C")
    assert _last_seen(await _metrics(cloud)) == {}
    agent = await cloud.enroll("KIN-01")
    issued = cloud.clock.now
    cred = await cloud.credential(agent, block_size=10)
    assert _last_seen(await _metrics(cloud)) == {"KIN-01": ("A1234567B", issued.timestamp())}
    cloud.clock.advance(hours=2)
    await cloud.reconcile(agent, [agent.seal(cred, cred.block_start, when=issued)])
    assert _last_seen(await _metrics(cloud)) == {"KIN-01": ("A1234567B", cloud.clock.now.timestamp())}
    # No sales for a day, the box on: its heartbeats keep the outlet heard from.
    cloud.clock.advance(hours=26)
    answer = await cloud.post("/v1/agents/me/heartbeat", None, agent.headers, 200)
    assert answer["agent_id"] == agent.id and answer["received_at"].startswith(cloud.clock.now.strftime("%Y-%m-%dT%H:%M:%S"))
    assert _last_seen(await _metrics(cloud)) == {"KIN-01": ("A1234567B", cloud.clock.now.timestamp())}
    # The operator's list says the same (the CLI's `stalela cloud outlets`, GET /v1/admin/outlets).
    listed = {o["id"]: o["last_seen"] for o in (await cloud.get("/v1/admin/outlets", cloud.admin))["outlets"]}
    assert listed == {"KIN-01": answer["received_at"], "KIN-02": None}
    # Only an enrolled agent beats for its outlet: the admin token is refused, and so is no token.
    await cloud.post("/v1/agents/me/heartbeat", None, cloud.admin, 403)
    await cloud.post("/v1/agents/me/heartbeat", None, {}, 401)


async def test_the_dgi_backlog_counts_what_has_not_reached_the_dgi(cloud):
    """Entries with no submission row yet (the DGI never answered, or the outlet has no token)
    are the backlog: before forwarding is on there is none, once it is on all of them wait, the
    oldest for as long as the cloud has held it."""
    from datetime import timedelta

    from cloud_stub import forwarding

    await cloud.outlet()
    agent = await cloud.enroll()
    cloud.clock.now -= timedelta(hours=2)  # recorded two hours ago
    cred = await cloud.credential(agent, block_size=10)
    await cloud.reconcile(agent, [agent.seal(cred, n, when=cloud.clock.now)
                                  for n in range(cred.block_start, cred.block_start + 3)])
    text = await _metrics(cloud)
    assert _value(text, "stalela_cloud_dgi_backlog") == 0  # forwarding off: no queue
    forwarding.add_queues(cloud.service.store, cloud.clock.now)  # what a forwarder does first
    text = await _metrics(cloud)
    assert _value(text, "stalela_cloud_dgi_backlog") == 3
    assert _value(text, "stalela_cloud_dgi_backlog_oldest_seconds") >= 2 * 3600
    assert _value(text, "stalela_cloud_dgi_failing_outlets") == 0


async def test_every_metric_a_cloud_alert_rule_names_is_in_a_live_scrape(cloud):
    """A real cloud's /metrics after real traffic (a flag, a rejection, an outlet heard from):
    the families the rules read are all there, so no rule silently watches nothing."""
    await cloud.outlet()
    agent = await cloud.enroll()
    cred = await cloud.credential(agent, block_size=10)
    forged = agent.seal(cred, cred.block_start, tamper=lambda inv: inv["totals"].update(total="1.00"))
    await cloud.reconcile(agent, [forged])
    exported = {s.name for f in text_string_to_metric_families(await _metrics(cloud)) for s in f.samples}
    named = {m for rule in _cloud_rules() for m in re.findall(r"\bstalela_[a-z0-9_]+", rule["expr"])}
    assert "stalela_cloud_outlet_last_seen_timestamp_seconds" in named
    # The DGI queue by state only has series once the DGI answered about an invoice (no DGI
    # here): its families are checked by the declared-families test below.
    dgi = {"stalela_cloud_dgi_queue", "stalela_cloud_dgi_oldest_seconds"}
    assert sorted(named - exported - dgi) == []


def _cloud_rules() -> list[dict]:
    doc = yaml.safe_load((ROOT / "docs" / "monitoring" / "cloud-alerts.yml").read_text())
    return [r for g in doc["groups"] for r in g["rules"]]


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


def test_the_cloud_alert_rules_parse_and_pass_their_unit_tests_with_promtool():
    """Prometheus' own parser, and the rules' unit tests (docs/monitoring/cloud-alerts.test.yml:
    the silent outlet, the DGI backlog, each rule once)."""
    import shutil
    import subprocess

    import pytest
    if shutil.which("promtool") is None:
        pytest.skip("promtool not installed (Debian's prometheus package; .ci/run installs it)")
    folder = ROOT / "docs" / "monitoring"
    tested = set(re.findall(r"alertname: (\w+)", (folder / "cloud-alerts.test.yml").read_text()))
    assert tested == {r["alert"] for r in _cloud_rules()}  # every rule has a unit test
    for args in (["check", "rules", "cloud-alerts.yml"], ["test", "rules", "cloud-alerts.test.yml"]):
        res = subprocess.run(["promtool", *args], cwd=folder, capture_output=True, text=True)
        assert res.returncode == 0, res.stdout + res.stderr
