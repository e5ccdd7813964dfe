"""Tests for gateway.credtable.CredentialTable: sorted columns, lookups and copy-on-write changes."""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from gateway.credtable import CredentialTable
from gateway.model import AssuranceLevel, Credential, CredentialKind

KIND = CredentialKind.DESFIRE
START = datetime(2026, 1, 1, 8, 0, tzinfo=UTC)
END = datetime(2026, 12, 31, 18, 0, tzinfo=timezone(timedelta(hours=2)))


def value(n: int) -> str:
    """The ``n``-th value: eight hex digits, so that value order is numeric order."""
    return f"{n:08X}"


def card(
    n: int,
    *,
    credential_id: str | None = None,
    user: str | None = None,
    assurance: AssuranceLevel = AssuranceLevel.HIGH,
    revoked: bool = False,
    valid_from: datetime | None = None,
    valid_until: datetime | None = None,
) -> Credential:
    """A credential of ``KIND`` with value ``value(n)``."""
    return Credential(
        credential_id or f"c{n}",
        user or f"u{n % 7}",
        KIND,
        value(n),
        assurance,
        revoked,
        valid_from,
        valid_until,
    )


def snapshot(table: CredentialTable) -> list[Credential]:
    """Everything a table holds, in its own order."""
    return list(table)


def check(table: CredentialTable, expected: Iterable[Credential]) -> None:
    """``table`` holds exactly ``expected``: same length, value order, every lookup."""
    by_value = {c.value: c for c in expected}
    assert len(table) == len(by_value)
    assert list(table) == [by_value[v] for v in sorted(by_value)]
    for v, credential in by_value.items():
        assert table.get(v) == credential


# --- build, get, len, iter ------------------------------------------------------------------


def test_build_get_len_and_iter() -> None:
    cards = [
        card(3, user="ada"),
        card(1, assurance=AssuranceLevel.MEDIUM, valid_from=START),
        card(2, revoked=True, valid_until=END),
    ]
    table = CredentialTable.build(KIND, cards)
    assert table.kind is KIND
    assert len(table) == 3
    for c in cards:
        assert table.get(c.value) == c
    assert list(table) == sorted(cards, key=lambda c: c.value)
    # Iterating twice gives the same again: iteration does not consume the table.
    assert list(table) == list(table)


def test_empty_table() -> None:
    table = CredentialTable(KIND)
    assert len(table) == 0
    assert list(table) == []
    assert table.get(value(1)) is None
    assert CredentialTable.build(KIND, []).get("") is None


@pytest.mark.parametrize(
    "absent",
    [
        value(0),  # before every value
        value(15),  # between two values
        value(99),  # after every value
        value(10)[:-1],  # a prefix of a value held
        value(10) + "0",  # a value held, extended
        value(10).lower(),  # values are compared exactly
        "",
    ],
)
def test_get_of_an_absent_value_is_none(absent: str) -> None:
    table = CredentialTable.build(KIND, [card(10), card(20), card(30)])
    assert table.get(absent) is None


def test_iteration_is_in_value_order_whatever_the_input_order() -> None:
    numbers = [50, 3, 17, 0, 255, 4096, 16, 1]
    table = CredentialTable.build(KIND, [card(n) for n in numbers])
    assert [c.value for c in table] == sorted(value(n) for n in numbers)
    assert [c.id for c in table] == [f"c{n}" for n in sorted(numbers)]


def test_values_are_ordered_as_strings() -> None:
    # The order is the strings' order (what bisect uses), not the numbers they spell.
    values = ["0A", "09", "A0", "1"]
    table = CredentialTable.build(
        KIND, [Credential(f"c{v}", "u", KIND, v, AssuranceLevel.LOW) for v in values]
    )
    assert [c.value for c in table] == ["09", "0A", "1", "A0"]
    for v in values:
        found = table.get(v)
        assert found is not None
        assert found.id == f"c{v}"


# --- append ---------------------------------------------------------------------------------


def test_append_in_increasing_order_builds_the_same_table() -> None:
    cards = [card(n, revoked=n % 2 == 0, valid_from=START if n > 2 else None) for n in range(6)]
    appended = CredentialTable(KIND)
    for c in cards:
        appended.append(
            c.id, c.user_id, c.value, c.assurance, c.revoked, c.valid_from, c.valid_until
        )
    check(appended, cards)
    assert list(appended) == list(CredentialTable.build(KIND, reversed(cards)))


@pytest.mark.parametrize("n", [1, 5], ids=["smaller", "equal"])
def test_append_refuses_a_value_that_does_not_sort_after_the_last(n: int) -> None:
    table = CredentialTable(KIND)
    table.append("c1", "u1", value(1), AssuranceLevel.HIGH, False, None, None)
    table.append("c5", "u1", value(5), AssuranceLevel.HIGH, False, None, None)
    before = snapshot(table)
    with pytest.raises(ValueError, match="increasing value order"):
        table.append("cx", "u2", value(n), AssuranceLevel.LOW, True, None, None)
    # The refused credential left nothing behind in any column.
    assert snapshot(table) == before
    assert len(table) == 2
    table.append("c9", "u1", value(9), AssuranceLevel.LOW, False, None, None)
    assert [c.id for c in table] == ["c1", "c5", "c9"]


# --- with_changes ---------------------------------------------------------------------------


def test_with_changes_inserts() -> None:
    old = CredentialTable.build(KIND, [card(10), card(20)])
    new = old.with_changes([], [card(15), card(5), card(25)])
    check(new, [card(5), card(10), card(15), card(20), card(25)])


def test_with_changes_deletes_and_ignores_absent_values() -> None:
    old = CredentialTable.build(KIND, [card(n) for n in range(1, 6)])
    new = old.with_changes([value(2), value(4), value(99)], [])
    check(new, [card(1), card(3), card(5)])


def test_with_changes_replaces_a_value() -> None:
    old = CredentialTable.build(KIND, [card(1), card(2), card(3)])
    replacement = card(
        2,
        credential_id="other",
        user="someone-else",
        assurance=AssuranceLevel.LOW,
        revoked=True,
        valid_from=START,
        valid_until=END,
    )
    new = old.with_changes([], [replacement])
    check(new, [card(1), replacement, card(3)])


def test_with_changes_removed_and_added_together() -> None:
    old = CredentialTable.build(KIND, [card(1), card(2), card(3)])
    # A value both removed and added ends up with the added credential.
    new = old.with_changes([value(1), value(2)], [card(2, user="zed"), card(4)])
    check(new, [card(2, user="zed"), card(3), card(4)])


def test_with_changes_can_empty_a_table_and_fill_an_empty_one() -> None:
    old = CredentialTable.build(KIND, [card(1), card(2)])
    emptied = old.with_changes([value(1), value(2)], [])
    check(emptied, [])
    check(emptied.with_changes([], [card(7)]), [card(7)])


def changes_for(
    size: int,
) -> tuple[list[Credential], list[str], list[Credential], list[Credential]]:
    """A table's cards, ``size`` changes to it (removals, replacements, inserts), and the result."""
    start = [card(n) for n in range(0, 400, 2)]
    removed = [value(4 * i) for i in range(size // 3)]
    added = [
        # Even ones replace a value held (4i + 2 is never removed); odd ones insert a new value.
        card(4 * i + 2, credential_id=f"r{i}", assurance=AssuranceLevel.LOW, revoked=True)
        if i % 2 == 0
        else card(4 * i + 1, user="new", valid_until=END)
        for i in range(size - len(removed))
    ]
    model = {c.value: c for c in start}
    for v in removed:
        del model[v]
    for c in added:
        model[c.value] = c
    return start, removed, added, list(model.values())


@pytest.mark.parametrize("size", [1, 3, 63, 64, 65, 66, 130])
def test_with_changes_small_and_large(size: int) -> None:
    # Up to 64 changes are made in place on a copy; above, the table is rebuilt.
    start, removed, added, expected = changes_for(size)
    assert len(removed) + len(added) == size
    old = CredentialTable.build(KIND, start)
    before = snapshot(old)
    new = old.with_changes(removed, added)
    check(new, expected)
    assert snapshot(old) == before


@pytest.mark.parametrize("size", [65, 130])
def test_rebuilding_gives_the_same_table_as_changing_in_small_steps(size: int) -> None:
    start, removed, added, expected = changes_for(size)
    old = CredentialTable.build(KIND, start)
    at_once = old.with_changes(removed, added)
    stepwise = old
    for i in range(0, len(removed), 20):
        stepwise = stepwise.with_changes(removed[i : i + 20], [])
    for i in range(0, len(added), 20):
        stepwise = stepwise.with_changes([], added[i : i + 20])
    assert list(at_once) == list(stepwise)
    check(at_once, expected)
    check(stepwise, expected)


@pytest.mark.parametrize("size", [2, 100], ids=["small", "rebuild"])
def test_the_old_table_is_unchanged_after_with_changes(size: int) -> None:
    old = CredentialTable.build(KIND, [card(n) for n in range(0, 200, 2)])
    before = snapshot(old)
    removed = [value(n) for n in range(0, size, 2)]
    added = [card(n, user="changed") for n in range(1, size, 2)]
    new = old.with_changes(removed, added)
    assert new is not old
    assert snapshot(old) == before
    assert len(old) == 100
    for c in before:
        assert old.get(c.value) == c
    for c in added:
        assert old.get(c.value) is None
        assert new.get(c.value) == c
    for v in removed:
        assert new.get(v) is None
    # A second change from the same old table does not see the first one.
    other = old.with_changes([], [card(1, user="other")])
    assert other.get(value(1)) == card(1, user="other")
    assert new.get(value(1)) == card(1, user="changed")


def test_with_changes_without_changes_is_an_equal_table() -> None:
    old = CredentialTable.build(KIND, [card(1), card(2)])
    same = old.with_changes([], [])
    assert list(same) == list(old)
    assert same.kind is KIND


# --- flags ----------------------------------------------------------------------------------

EVERY_FLAG = list(itertools.product(AssuranceLevel, [False, True]))


def flagged() -> list[Credential]:
    """One credential for each assurance and revoked flag, with and without validity."""
    return [
        card(
            i,
            assurance=assurance,
            revoked=revoked,
            valid_from=START if i % 2 else None,
            valid_until=END if i % 3 else None,
        )
        for i, (assurance, revoked) in enumerate(EVERY_FLAG)
    ]


def test_revoked_flag_and_assurance_survive_build_and_append() -> None:
    cards = flagged()
    check(CredentialTable.build(KIND, cards), cards)
    appended = CredentialTable(KIND)
    for c in cards:
        appended.append(
            c.id, c.user_id, c.value, c.assurance, c.revoked, c.valid_from, c.valid_until
        )
    check(appended, cards)
    for c in appended:
        assert type(c.assurance) is AssuranceLevel
        assert type(c.revoked) is bool


@pytest.mark.parametrize("padding", [0, 100], ids=["small", "rebuild"])
def test_revoked_flag_and_assurance_survive_with_changes(padding: int) -> None:
    cards = flagged()
    base = CredentialTable.build(KIND, [card(1000 + n) for n in range(padding)])
    table = base.with_changes([], cards)
    check(table, [*cards, *(card(1000 + n) for n in range(padding))])
    # Changing the neighbours of a flagged credential moves its flags with it.
    shuffled = table.with_changes([cards[0].value], [card(n) for n in range(50, 50 + padding)])
    for c in cards[1:]:
        assert shuffled.get(c.value) == c
    # And flipping them on a replacement takes.
    flipped = [
        card(i, assurance=c.assurance, revoked=not c.revoked, valid_from=c.valid_until)
        for i, c in enumerate(cards)
    ]
    check(base.with_changes([], cards).with_changes([], flipped), [*flipped, *base])


# --- revalidation (the side dict) -----------------------------------------------------------


def key(n: int, days: int | None = 30, at: datetime | None = START) -> Credential:
    """``card(n)`` with a revalidation period and a last revalidation."""
    c = card(n)
    return Credential(
        c.id, c.user_id, c.kind, c.value, c.assurance, c.revoked, c.valid_from, c.valid_until,
        days, at,
    )  # fmt: skip


def revalidated() -> list[Credential]:
    """Credentials with both fields, one of them, or none, interleaved in value order."""
    return [key(0), card(1), key(2, days=None), key(3, at=None), card(4), key(5, days=3650)]


def test_revalidation_survives_build_and_append() -> None:
    cards = revalidated()
    check(CredentialTable.build(KIND, cards), cards)
    appended = CredentialTable(KIND)
    for c in cards:
        appended.append(
            c.id, c.user_id, c.value, c.assurance, c.revoked, c.valid_from, c.valid_until,
            revalidation_days=c.revalidation_days, revalidated_at=c.revalidated_at,
        )  # fmt: skip
    check(appended, cards)


def test_only_credentials_with_a_revalidation_use_the_side_dict() -> None:
    table = CredentialTable.build(KIND, [*revalidated(), *(card(n) for n in range(10, 100))])
    assert sorted(table._revalidation) == [value(0), value(2), value(3), value(5)]


@pytest.mark.parametrize("padding", [0, 100], ids=["alone", "padded"])
def test_revalidation_follows_its_credential_through_changes(padding: int) -> None:
    base = CredentialTable.build(KIND, [card(1000 + n) for n in range(padding)])
    cards = revalidated()
    table = base.with_changes([], cards)
    check(table, [*cards, *base])
    # Replacing a key by one without a revalidation drops it; removing a key drops its entry.
    changed = table.with_changes([value(2)], [card(0), key(1, days=7)])
    expected = [card(0), key(1, days=7), key(3, at=None), card(4), key(5, days=3650), *base]
    check(changed, expected)
    assert sorted(changed._revalidation) == [value(1), value(3), value(5)]
    check(table, [*cards, *base])  # the old table is unchanged
    rebuilt = table.with_changes([], [card(n) for n in range(200, 280)])
    check(rebuilt, [*cards, *base, *(card(n) for n in range(200, 280))])


# --- against a model ------------------------------------------------------------------------

VALUES = st.integers(min_value=0, max_value=150).map(value)
WHEN = st.sampled_from([None, START, END])


@st.composite
def credentials(draw: st.DrawFn, v: str) -> Credential:
    return Credential(
        draw(st.sampled_from(["c1", "c2", "c3", "longer-credential-id"])),
        draw(st.sampled_from(["u1", "u2", "u3"])),
        KIND,
        v,
        draw(st.sampled_from(AssuranceLevel)),
        draw(st.booleans()),
        draw(WHEN),
        draw(WHEN),
        draw(st.sampled_from([None, None, None, 1, 3650])),
        draw(st.sampled_from([None, None, START])),
    )


@st.composite
def changes(draw: st.DrawFn) -> tuple[list[str], list[Credential]]:
    """Removed values (some absent, some repeated) and added credentials (values unique)."""
    large = draw(st.booleans())
    low, high = (40, 90) if large else (0, 8)
    removed = draw(st.lists(VALUES, min_size=low // 2, max_size=high // 2))
    added_values = draw(st.lists(VALUES, min_size=low // 2, max_size=high // 2, unique=True))
    added = [draw(credentials(v)) for v in added_values]
    return removed, added


@settings(max_examples=100, deadline=None)
@given(
    initial=st.lists(VALUES, unique=True, max_size=60).flatmap(
        lambda vs: st.tuples(*(credentials(v) for v in vs)).map(list)
    ),
    steps=st.lists(changes(), min_size=1, max_size=6),
    probes=st.lists(st.integers(min_value=0, max_value=300).map(value), max_size=30),
)
def test_with_changes_matches_a_dict(
    initial: list[Credential],
    steps: list[tuple[list[str], list[Credential]]],
    probes: list[str],
) -> None:
    model = {c.value: c for c in initial}
    table = CredentialTable.build(KIND, initial)
    for removed, added in steps:
        event("rebuilt" if len(removed) + len(added) > 64 else "changed in place")
        previous, previous_contents = table, snapshot(table)
        table = table.with_changes(removed, added)
        for v in removed:
            model.pop(v, None)
        for c in added:
            model[c.value] = c
        assert snapshot(previous) == previous_contents
        assert len(table) == len(model)
        assert list(table) == [model[v] for v in sorted(model)]
        for v, credential in model.items():
            assert table.get(v) == credential
        for v in [*probes, *removed, "", "G"]:
            if v not in model:
                assert table.get(v) is None
