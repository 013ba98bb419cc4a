"""bench/emcf.py measures what it says: both paths seal for real, and the ratios come from them."""
from __future__ import annotations

import pytest

from bench import emcf as emcf_bench


def test_the_emcf_bench_seals_through_both_apis_and_reports_the_ratio(tmp_path):
    r = emcf_bench.one_run(tmp_path, sales=5)
    assert r["ratio_p50"] == pytest.approx(r["emcf_p50_ms"] / r["v1_p50_ms"])
    assert r["v1_p50_ms"] > 0 and r["emcf_p50_ms"] > 0
    assert r["v1_cpu_us"] > 0 and r["emcf_cpu_us"] > 0  # the daemon's own CPU, read from /proc
    table = emcf_bench.render([r])
    assert "target ≤ 1.5 ×" in table and "/api/invoice" in table and "CPU per sale" in table
