"""Run one benchmark by name: ``python -m bench decision``."""

from __future__ import annotations

import importlib
import sys

# Imported only when chosen: a benchmark's process holds nothing another one needs (RSS figures).
BENCHMARKS = {
    "decision": "bench.decision",
    "e2e": "bench.e2e",
    "delta": "bench.delta",
    "outbox": "bench.outbox",
    "snapshot": "bench.snapshot",
    "credentials": "bench.credentials",
    "officernd": "bench.officernd",
    "export": "bench.export",
    "pin": "bench.pin",
}


def main() -> int:
    """Dispatch to the benchmark named on the command line."""
    if len(sys.argv) < 2 or sys.argv[1] not in BENCHMARKS:
        print(f"usage: python -m bench {{{','.join(BENCHMARKS)}}} [options]", file=sys.stderr)
        return 2
    status: int = importlib.import_module(BENCHMARKS[sys.argv[1]]).main(sys.argv[2:])
    return status


raise SystemExit(main())
