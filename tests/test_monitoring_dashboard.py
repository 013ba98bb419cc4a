"""The Grafana dashboard in docs/monitoring/ is valid JSON, and every metric its panels query is
one the agent or the cloud exports (a renamed metric would leave a panel silently empty)."""
from __future__ import annotations

import json
import re

from prometheus_client import generate_latest

from agent.api.app import _metrics
from cloud_stub.metrics import CloudMetrics
from tests.support import ROOT


def _families(text: str) -> set[str]:
    names = set(re.findall(r"^# TYPE (\w+) (\w+)", text, re.M))
    out = set()
    for name, kind in names:
        out.add(name)
        out.update({f"{name}_total", f"{name}_bucket", f"{name}_sum", f"{name}_count", f"{name}_info"})
    return out


def test_every_panel_queries_an_exported_metric():
    dashboard = json.loads((ROOT / "docs" / "monitoring" / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    named = {m for e in exprs for m in re.findall(r"\b(stalela_[a-z0-9_]+)", e)}
    exported = _families(generate_latest(_metrics()["registry"]).decode()) | \
        _families(generate_latest(CloudMetrics().registry).decode())
    assert named and named <= exported, named - exported
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
