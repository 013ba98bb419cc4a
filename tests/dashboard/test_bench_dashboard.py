"""bench/dashboard.py at a tiny scale: the data it generates in SQL is a database the cloud
serves (every page it times answered 200, or the run fails) and the figures are there."""
from __future__ import annotations

from bench import dashboard


def test_the_dashboard_bench_runs_small(tmp_path, database_url):
    row = dashboard.run(scale=0.0005, samples=10, database_url=database_url, workdir=tmp_path,
                        progress=lambda text: None)
    assert row["outlets"] == 10 and row["entries"] == 5000
    for kind in ("outlets", "outlet", "ledger", "kpis"):
        assert 0 < row[f"{kind}_p50_ms"] <= row[f"{kind}_p95_ms"]
    table = dashboard.render([row])
    assert table.count("p95 ≤ 300 ms") == 4 and "10 outlets, 5,000 ledger entries" in table
