"""Figures every benchmark quotes."""

from __future__ import annotations

from collections.abc import Sequence


def percentile(samples: Sequence[float], q: float) -> float:
    """The q-quantile (0..1) of samples, nearest-rank; 0.0 for no samples."""
    ordered = sorted(samples)
    return float(ordered[min(len(ordered) - 1, int(q * len(ordered)))]) if ordered else 0.0
