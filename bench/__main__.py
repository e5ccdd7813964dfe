"""Run one benchmark by name: ``python -m bench decision``."""

from __future__ import annotations

import sys

from bench import decision, e2e

BENCHMARKS = {"decision": decision.main, "e2e": e2e.main}


def main() -> int:
    """Dispatch to the benchmark named on the command line."""
    if len(sys.argv) < 2 or sys.argv[1] not in BENCHMARKS:
        print(f"usage: python -m bench {{{','.join(BENCHMARKS)}}} [options]", file=sys.stderr)
        return 2
    return BENCHMARKS[sys.argv[1]](sys.argv[2:])


raise SystemExit(main())
