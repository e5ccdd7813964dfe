"""Tests for gateway.backoff: capped exponential delays with full jitter."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from gateway.backoff import Backoff


@given(
    base=st.floats(min_value=0.001, max_value=10),
    cap=st.floats(min_value=0.001, max_value=600),
    seed=st.integers(min_value=0, max_value=2**32),
    failures=st.integers(min_value=1, max_value=80),
)
def test_delays_stay_within_the_capped_ceiling(
    base: float, cap: float, seed: int, failures: int
) -> None:
    backoff = Backoff(base_s=base, cap_s=cap, rng=random.Random(seed))

    for n in range(failures):
        delay = backoff.next_delay()
        assert 0 <= delay <= min(cap, base * 2**n)
    assert backoff.attempts == failures


def test_ceiling_grows_then_caps() -> None:
    class Top(random.Random):
        """Always draws the top of the range, to see the ceiling itself."""

        def uniform(self, a: float, b: float) -> float:
            return b

    backoff = Backoff(base_s=1.0, cap_s=30.0, rng=Top())

    assert [backoff.next_delay() for _ in range(8)] == [1, 2, 4, 8, 16, 30, 30, 30]


def test_many_failures_do_not_overflow() -> None:
    backoff = Backoff(base_s=1.0, cap_s=300.0, rng=random.Random(1), attempts=10_000)

    assert 0 <= backoff.next_delay() <= 300


def test_delays_grow_on_average() -> None:
    rng = random.Random(7)
    early = [Backoff(rng=rng).next_delay() for _ in range(200)]
    late = []
    for _ in range(200):
        backoff = Backoff(rng=rng, attempts=6)
        late.append(backoff.next_delay())

    assert max(early) <= 1.0
    assert sum(late) / len(late) > 10 * sum(early) / len(early)


def test_reset_starts_over() -> None:
    backoff = Backoff(base_s=2.0, cap_s=100.0, rng=random.Random(3))
    for _ in range(5):
        backoff.next_delay()

    backoff.reset()

    assert backoff.attempts == 0
    assert backoff.next_delay() <= 2.0
    assert backoff.attempts == 1


def test_same_seed_same_delays() -> None:
    first = Backoff(rng=random.Random(42))
    second = Backoff(rng=random.Random(42))
    other = Backoff(rng=random.Random(43))

    a = [first.next_delay() for _ in range(10)]
    b = [second.next_delay() for _ in range(10)]
    c = [other.next_delay() for _ in range(10)]

    assert a == b
    assert a != c


def test_jitter_spreads_the_delays() -> None:
    rng = random.Random(5)
    delays = {Backoff(base_s=1.0, cap_s=300.0, rng=rng, attempts=4).next_delay() for _ in range(50)}

    assert len(delays) == 50
    assert min(delays) < 4 < max(delays)
