"""The benchmarks still run and print their JSON (tiny sizes: figures come from `python -m bench`)."""

from __future__ import annotations

import json
import subprocess
import sys


def run_bench(*args: str) -> dict[str, object]:
    result = subprocess.run(
        [sys.executable, "-m", "bench", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    last: dict[str, object] = json.loads(result.stdout.strip().splitlines()[-1])
    return last


def test_decision_benchmark_prints_its_figures() -> None:
    figures = run_bench("decision", "--users", "300", "--samples", "500")
    assert figures["users"] == 300
    assert figures["credentials"] == 900
    for key in ("decide_p50_us", "decide_p99_us", "sqlite_lookup_p99_us", "ratio_p99", "rss_mb"):
        value = figures[key]
        assert isinstance(value, float)
        assert value > 0


def test_e2e_benchmark_prints_its_figures() -> None:
    figures = run_bench("e2e", "--samples", "20")
    assert figures["granted"] == 20  # every genuine key opened the door
    assert figures["baud"] == 115200
    for key in ("e2e_p50_ms", "e2e_p99_ms", "wire_floor_ms", "ratio_p99"):
        value = figures[key]
        assert isinstance(value, float)
        assert value > 0


def test_delta_benchmark_prints_its_figures() -> None:
    figures = run_bench("delta", "--samples", "20")
    assert figures["samples"] == 20
    for key in ("delta_p50_ms", "delta_p99_ms", "mqtt_rtt_p50_ms", "mqtt_rtt_p99_ms", "ratio_p99"):
        value = figures[key]
        assert isinstance(value, float)
        assert value > 0
    p50, p99 = figures["delta_p50_ms"], figures["delta_p99_ms"]
    assert isinstance(p50, float)
    assert isinstance(p99, float)
    assert p50 <= p99


def test_outbox_benchmark_loses_no_event() -> None:
    figures = run_bench("outbox", "--events", "2000")
    assert figures["events"] == 2000
    assert figures["lost"] == 0
    assert figures["outbox_left"] == 0  # every event was acknowledged and deleted
    duplicates = figures["duplicates"]
    assert isinstance(duplicates, int)
    assert duplicates >= 0  # at least once: a duplicate is allowed, a loss is not
    for key in ("drain_events_per_s", "buffer_s"):
        value = figures[key]
        assert isinstance(value, float)
        assert value > 0


def test_snapshot_benchmark_prints_its_figures() -> None:
    figures = run_bench("snapshot", "--users", "300")
    assert figures["users"] == 300
    assert figures["result"] == "applied"
    assert (figures["version_before"], figures["version_after"]) == (1, 2)
    for key in (
        "apply_s",
        "decide_p99_before_us",
        "decide_p99_during_apply_us",
        "peak_rss_mb",
        "snapshot_mb",
    ):
        value = figures[key]
        assert isinstance(value, float)
        assert value > 0


def test_credentials_benchmark_prints_its_figures() -> None:
    figures = run_bench("credentials", "--samples", "50", "--ble-runs", "3")
    assert figures["ble_e2e_runs"] == 3  # every enrolled phone was let in
    for key in (
        "ble_e2e_p99_ms",
        "ble_verify_p99_ms",
        "sun_verify_p99_us",
        "ev2_verify_p99_us",
        "desfire_verify_p99_us",
    ):
        value = figures[key]
        assert isinstance(value, float)
        assert value > 0
