"""``python -m bench pin`` still runs and prints its figures (a handful of samples: no timing)."""

from __future__ import annotations

from tests.bench.test_benchmarks import run_bench


def test_pin_benchmark_prints_its_figures() -> None:
    figures = run_bench("pin", "--samples", "3", "--users", "3")
    assert figures["samples"] == figures["granted"] == 3  # every PIN typed is someone's
    assert figures["scrypt"] == {"n": 16384, "r": 8, "p": 1}
    for key in ("entry_p50_ms", "entry_p99_ms", "bare_hash_p50_ms", "bare_hash_p99_ms"):
        value = figures[key]
        assert isinstance(value, int | float)
        assert value > 0
