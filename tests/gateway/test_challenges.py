"""Single-use challenges: issued here, redeemed once, within their lifetime."""

from __future__ import annotations

import threading

from gateway.challenges import ChallengeBook


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_challenge_is_redeemed_once() -> None:
    book = ChallengeBook()
    challenge = book.issue()
    assert len(challenge) == 16
    assert book.redeem(challenge)
    assert not book.redeem(challenge)


def test_challenges_are_fresh_and_sized() -> None:
    book = ChallengeBook()
    issued = {book.issue(8) for _ in range(200)}
    assert len(issued) == 200
    assert {len(c) for c in issued} == {8}


def test_a_challenge_not_issued_here_is_refused() -> None:
    assert not ChallengeBook().redeem(bytes(16))


def test_an_expired_challenge_is_refused() -> None:
    clock = Clock()
    book = ChallengeBook(lifetime_s=2.0, monotonic=clock)
    late, on_time = book.issue(), book.issue()
    clock.now += 2.0
    assert book.redeem(on_time)  # exactly at its deadline: still fresh
    clock.now += 0.001
    assert not book.redeem(late)
    assert len(book) == 0  # a refused one is gone too


def test_the_oldest_outstanding_challenge_is_forgotten_beyond_capacity() -> None:
    book = ChallengeBook(capacity=3)
    first, *rest = [book.issue() for _ in range(4)]
    assert len(book) == 3
    assert not book.redeem(first)
    assert all(book.redeem(c) for c in rest)


def test_challenges_issued_from_threads_are_each_redeemed_once() -> None:
    book = ChallengeBook(capacity=10_000)
    issued: list[bytes] = []

    def issue_many() -> None:
        issued.extend(book.issue() for _ in range(1000))

    threads = [threading.Thread(target=issue_many) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(book) == 4000
    assert all(book.redeem(c) for c in issued)
    assert len(book) == 0
