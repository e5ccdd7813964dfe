"""``python -m bench export`` still runs and prints its figures (a tiny journal: no timing)."""

from __future__ import annotations

from tests.bench.test_benchmarks import run_bench


def test_export_benchmark_prints_its_figures() -> None:
    figures = run_bench("export", "--days", "3", "--per-day", "500", "--page-rows", "200")
    assert figures["rows"] == figures["select_rows"] == figures["export_rows"] == 1500
    assert figures["chunks"] == 1 + 1500 // 200 + 1  # the header, then one chunk per page
    for key in ("export_rows_per_s", "select_rows_per_s", "rss_before_mb", "tracemalloc_peak_mb"):
        value = figures[key]
        assert isinstance(value, int | float)
        assert value > 0
