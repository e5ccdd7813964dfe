"""Member login with OfficeRnD credentials: budgets, sessions, and the sign-in against the fake."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest

from gateway.officernd.client import (
    ALL_SCOPES,
    READ_SCOPES,
    SIGNIN,
    OfficeRnDClient,
    OfficeRnDSettings,
)
from gateway.officernd.login import (
    NO_MEMBER,
    NOT_ACTIVATED,
    NOT_SYNCED,
    REFUSED_MESSAGE,
    UNREACHABLE,
    LoginRefused,
    MemberLogin,
    member_id_of,
)
from gateway.sessions import LoginLimiter, Sessions, TooManyAttempts
from tests.officernd.fake import FakeOfficeRnD

ORG = "acme"
CLIENT_ID = "client-login-1"
CLIENT_SECRET = "client-secret-login-b71c"
EMAIL = "ada.lovelace@example.com"
PASSWORD = "Tr0ub4dor&3-login-secret"
OTHER_EMAIL = "bob.babbage@example.com"
OTHER_PASSWORD = "bob-password-2f0e"
ADDRESS = "192.0.2.10"
WALL = datetime(2026, 12, 1, 14, 0, tzinfo=UTC)


@dataclass
class Tick:
    """A monotonic clock a test moves by hand."""

    now: float = 1_000.0

    def __call__(self) -> float:
        return self.now


async def no_sleep(seconds: float) -> None:
    """The client's backoff, without waiting (the tests need no real time to pass)."""
    await asyncio.sleep(0)


def fake_settings(fake: FakeOfficeRnD, **changes: Any) -> OfficeRnDSettings:
    """Settings that reach ``fake`` with every scope the connector uses."""
    values: dict[str, Any] = {
        "org": fake.org,
        "client_id": fake.client_id,
        "client_secret": fake.client_secret,
        "api_base": fake.api_base,
        "identity_url": fake.identity_url,
        "scopes": ALL_SCOPES,
    }
    return OfficeRnDSettings(**(values | changes))


def new_fake() -> FakeOfficeRnD:
    """An organisation with the application these tests use."""
    return FakeOfficeRnD(org=ORG, client_id=CLIENT_ID, client_secret=CLIENT_SECRET)


def signins(fake: FakeOfficeRnD) -> int:
    """How many sign-in requests reached the fake (each one carried a password)."""
    return sum(1 for r in fake.requests if r.path.endswith("/auth/signin"))


@pytest.fixture
async def fake() -> AsyncIterator[FakeOfficeRnD]:
    async with new_fake() as server:
        yield server


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
def members(fake: FakeOfficeRnD) -> dict[str, str]:
    """Ada and Bob can sign in; their member ids by email."""
    ada = fake.add_member("Ada Lovelace", EMAIL)
    bob = fake.add_member("Bob Babbage", OTHER_EMAIL)
    fake.add_login(EMAIL, PASSWORD, ada["_id"])
    fake.add_login(OTHER_EMAIL, OTHER_PASSWORD, bob["_id"])
    return {EMAIL: ada["_id"], OTHER_EMAIL: bob["_id"]}


@dataclass
class Rig:
    """A MemberLogin wired to the fake, with the parts a test looks at."""

    login: MemberLogin
    sessions: Sessions
    limiter: LoginLimiter
    tick: Tick
    users: set[str]
    client: list[OfficeRnDClient | None]


MakeRig = Callable[..., Rig]


@pytest.fixture
def make_rig(fake: FakeOfficeRnD, http: aiohttp.ClientSession, members: dict[str, str]) -> MakeRig:
    def make(settings: OfficeRnDSettings | None = None, **limits: Any) -> Rig:
        tick = Tick()
        client = OfficeRnDClient(
            settings or fake_settings(fake), http, sleep=no_sleep, max_retries=1
        )
        sessions = Sessions(clock=tick, wall_clock=lambda: WALL)
        limiter = LoginLimiter(clock=tick, **limits)
        users = {"ornd-" + member_id for member_id in members.values()}
        holder: list[OfficeRnDClient | None] = [client]
        login = MemberLogin(lambda: holder[0], sessions, limiter, user_exists=users.__contains__)
        return Rig(login, sessions, limiter, tick, users, holder)

    return make


async def refused(rig: Rig, email: str, password: str, address: str = ADDRESS) -> LoginRefused:
    """The LoginRefused a login raises (the test fails if it succeeds)."""
    with pytest.raises(LoginRefused) as caught:
        await rig.login.login(email, password, address)
    return caught.value


# --- the budgets ----------------------------------------------------------------------------------


def test_the_email_budget_is_spent_after_five_failures_and_refills_as_they_age() -> None:
    tick = Tick()
    limiter = LoginLimiter(clock=tick)
    for _ in range(5):
        limiter.check(EMAIL, ADDRESS)
        limiter.failed(EMAIL, ADDRESS)
        tick.now += 60
    with pytest.raises(TooManyAttempts) as caught:
        limiter.check(EMAIL.upper(), "198.51.100.1")  # case-folded; any address
    # The first failure (5 minutes ago) leaves the 15-minute window in 10 minutes.
    assert caught.value.retry_after_s == pytest.approx(600.0)
    limiter.check(OTHER_EMAIL, "198.51.100.1")  # other emails are not affected
    tick.now += 600
    limiter.check(EMAIL, ADDRESS)  # one failure aged out: one more attempt
    limiter.failed(EMAIL, ADDRESS)
    with pytest.raises(TooManyAttempts):
        limiter.check(EMAIL, ADDRESS)


def test_the_address_budget_counts_failures_across_emails() -> None:
    limiter = LoginLimiter(per_address=3, clock=Tick())
    for n in range(3):
        limiter.check(f"user{n}@example.com", ADDRESS)
        limiter.failed(f"user{n}@example.com", ADDRESS)
    with pytest.raises(TooManyAttempts):
        limiter.check("fresh@example.com", ADDRESS)
    limiter.check("fresh@example.com", "198.51.100.1")


def test_success_clears_the_email_but_not_the_address() -> None:
    limiter = LoginLimiter(per_email=2, per_address=3, clock=Tick())
    limiter.failed(EMAIL, ADDRESS)
    limiter.failed(EMAIL, ADDRESS)
    with pytest.raises(TooManyAttempts):
        limiter.check(EMAIL, "198.51.100.1")
    limiter.succeeded(EMAIL.title())
    limiter.check(EMAIL, "198.51.100.1")
    limiter.failed(OTHER_EMAIL, ADDRESS)
    with pytest.raises(TooManyAttempts):
        limiter.check(EMAIL, ADDRESS)  # the address's three failures still count


def test_the_limiter_tracks_a_bounded_number_of_keys() -> None:
    limiter = LoginLimiter(per_email=1, per_address=1, clock=Tick(), max_keys=100)
    for n in range(1_000):
        limiter.failed(f"user{n}@example.com", f"10.0.{n // 256}.{n % 256}")
    assert limiter.tracked == (100, 100)
    with pytest.raises(TooManyAttempts):
        limiter.check("user999@example.com", ADDRESS)  # the most recent are the ones kept
    limiter.check("user0@example.com", "10.9.9.9")


# --- sessions -------------------------------------------------------------------------------------


def test_a_session_lasts_its_ttl_and_keeps_no_token() -> None:
    tick = Tick()
    sessions = Sessions(ttl_s=60, clock=tick, wall_clock=lambda: WALL)
    session = sessions.create("ornd-1", "1", "Ada")
    assert len(session.token) >= 40
    assert session.token not in repr(session)
    assert session.expires_at_utc == WALL + timedelta(seconds=60)
    assert sessions.get(session.token) == session
    assert sessions.get(session.token[:-1] + ("A" if session.token[-1] != "A" else "B")) is None
    assert sessions.get("x" * 10_000) is None
    tick.now += 59.9
    assert sessions.get(session.token) is not None
    tick.now += 0.1
    assert sessions.get(session.token) is None
    assert len(sessions) == 0


def test_sessions_are_revoked_one_by_one_or_per_user() -> None:
    sessions = Sessions(clock=Tick())
    first = sessions.create("ornd-1", "1", "Ada")
    second = sessions.create("ornd-1", "1", "Ada")
    other = sessions.create("ornd-2", "2", "Bob")
    sessions.revoke(first.token)
    assert sessions.get(first.token) is None
    assert sessions.get(second.token) is not None
    assert sessions.revoke_user("ornd-1") == 1
    assert sessions.get(second.token) is None
    assert sessions.get(other.token) is not None


def test_sessions_are_bounded_and_expired_ones_purged() -> None:
    tick = Tick()
    sessions = Sessions(ttl_s=100, clock=tick, max_sessions=3)
    made = [sessions.create(f"ornd-{n}", str(n), "x") for n in range(4)]
    assert len(sessions) == 3
    assert sessions.get(made[0].token) is None  # the oldest made room
    assert all(sessions.get(s.token) is not None for s in made[1:])
    tick.now += 100
    sessions.create("ornd-9", "9", "x")
    assert len(sessions) == 1


@pytest.mark.parametrize(
    ("profile", "member_id"),
    [
        ({"member": "m1", "_id": "u1"}, "m1"),
        ({"member": {"_id": "m2", "name": "Ada"}}, "m2"),
        ({"_id": "m3"}, "m3"),
        ({"member": None, "_id": "m4"}, "m4"),
        ({"member": 7}, None),
        ({"email": "a@b.c"}, None),
    ],
)
def test_the_member_id_is_read_from_the_answer(
    profile: dict[str, Any], member_id: str | None
) -> None:
    assert member_id_of(profile) == member_id


# --- logging in against the fake OfficeRnD --------------------------------------------------------


async def test_a_member_logs_in_and_gets_a_session(
    make_rig: MakeRig, members: dict[str, str]
) -> None:
    rig = make_rig()
    session = await rig.login.login(EMAIL.upper(), PASSWORD, ADDRESS)
    member_id = members[EMAIL]
    assert (session.user_id, session.member_id, session.name) == (
        "ornd-" + member_id,
        member_id,
        "Ada Lovelace",
    )
    assert rig.sessions.get(session.token) == session


async def test_a_wrong_password_and_an_unknown_email_get_the_same_answer(
    make_rig: MakeRig, fake: FakeOfficeRnD
) -> None:
    rig = make_rig()
    wrong = await refused(rig, EMAIL, "not-the-password")
    unknown = await refused(rig, "nobody@example.com", PASSWORD)
    for err in (wrong, unknown):
        assert (err.status, str(err), err.retry_after_s) == (401, REFUSED_MESSAGE, None)
    assert signins(fake) == 2


async def test_five_failures_lock_the_email_and_the_sixth_password_is_never_sent(
    make_rig: MakeRig, fake: FakeOfficeRnD
) -> None:
    rig = make_rig()
    for n in range(5):
        assert (await refused(rig, EMAIL, f"guess-{n}")).status == 401
    assert signins(fake) == 5
    locked = await refused(rig, EMAIL, PASSWORD)  # even the right password
    assert locked.status == 429
    assert locked.retry_after_s == pytest.approx(900.0)
    assert "try again in 15 minutes" in str(locked)
    assert signins(fake) == 5
    rig.tick.now += 900
    assert (await rig.login.login(EMAIL, PASSWORD, ADDRESS)).user_id.startswith("ornd-")


async def test_failures_from_one_address_lock_it_for_every_email(
    make_rig: MakeRig, fake: FakeOfficeRnD
) -> None:
    rig = make_rig(per_address=3)
    for n in range(3):
        await refused(rig, f"guess{n}@example.com", "x")
    locked = await refused(rig, OTHER_EMAIL, OTHER_PASSWORD)
    assert locked.status == 429
    assert signins(fake) == 3
    await rig.login.login(OTHER_EMAIL, OTHER_PASSWORD, "198.51.100.7")


async def test_a_success_clears_the_emails_failures(make_rig: MakeRig) -> None:
    rig = make_rig()
    for _ in range(4):
        await refused(rig, EMAIL, "wrong")
    await rig.login.login(EMAIL, PASSWORD, ADDRESS)
    for _ in range(5):
        assert (await refused(rig, EMAIL, "wrong")).status == 401
    assert (await refused(rig, EMAIL, "wrong")).status == 429


async def test_a_member_not_synced_here_is_refused(
    make_rig: MakeRig, members: dict[str, str]
) -> None:
    rig = make_rig()
    rig.users.discard("ornd-" + members[EMAIL])
    err = await refused(rig, EMAIL, PASSWORD)
    assert (err.status, str(err)) == (403, NOT_SYNCED)
    assert len(rig.sessions) == 0


async def test_an_answer_without_a_member_is_a_bad_gateway(
    make_rig: MakeRig, fake: FakeOfficeRnD
) -> None:
    rig = make_rig()
    fake.fail_next("auth/signin", 200, body={"email": EMAIL, "name": "Ada"})
    err = await refused(rig, EMAIL, PASSWORD)
    assert (err.status, str(err)) == (502, NO_MEMBER)


async def test_officernd_failing_is_503_and_not_a_failed_login(
    make_rig: MakeRig, fake: FakeOfficeRnD
) -> None:
    rig = make_rig()
    await rig.login.login(EMAIL, PASSWORD, ADDRESS)  # the token is cached from here on
    fake.fail_next("auth/signin", 502, times=6)
    fake.fail_next("auth/signin", 429, retry_after=500)
    for _ in range(6):
        err = await refused(rig, EMAIL, PASSWORD)
        assert (err.status, str(err)) == (503, UNREACHABLE)
    rate_limited = await refused(rig, EMAIL, PASSWORD)
    assert (rate_limited.status, rate_limited.retry_after_s) == (503, 500.0)
    assert (await rig.login.login(EMAIL, PASSWORD, ADDRESS)).user_id


async def test_officernd_stopped_is_503(make_rig: MakeRig, fake: FakeOfficeRnD) -> None:
    # One counted failure would lock the email: the second attempt would be a 429. (Two
    # attempts only: each spends token requests, five a minute, on the unreachable host.)
    rig = make_rig(per_email=1)
    await fake.stop()
    for _ in range(2):
        err = await refused(rig, EMAIL, PASSWORD)
        assert (err.status, str(err)) == (503, UNREACHABLE)


async def test_not_activated_is_503(make_rig: MakeRig, fake: FakeOfficeRnD) -> None:
    rig = make_rig()
    rig.client[0] = None
    err = await refused(rig, EMAIL, PASSWORD)
    assert (err.status, str(err)) == (503, NOT_ACTIVATED)
    assert fake.requests == []


async def test_a_refused_application_is_not_a_wrong_password(
    make_rig: MakeRig, fake: FakeOfficeRnD
) -> None:
    rig = make_rig(fake_settings(fake, client_secret="rotated-away"), per_email=1)
    for _ in range(2):
        err = await refused(rig, EMAIL, PASSWORD)
        assert err.status == 503
        assert "application credentials" in str(err)
    assert signins(fake) == 0


@pytest.mark.parametrize("granted", ["not granted", "not asked for"])
async def test_a_missing_signin_permission_is_503_and_sends_no_password(
    make_rig: MakeRig, fake: FakeOfficeRnD, granted: str
) -> None:
    if granted == "not granted":
        fake.granted_scopes = frozenset(ALL_SCOPES) - {SIGNIN}
        rig = make_rig()
    else:
        rig = make_rig(fake_settings(fake, scopes=READ_SCOPES))
    err = await refused(rig, EMAIL, PASSWORD)
    assert err.status == 503
    assert SIGNIN in str(err)
    assert signins(fake) == 0


@pytest.mark.parametrize(
    ("email", "password"),
    [
        ("", PASSWORD),
        ("ab", PASSWORD),
        ("no-at-sign.example.com", PASSWORD),
        ("a" * 250 + "@x.com", PASSWORD),
        ("ada @example.com", PASSWORD),
        ("ada@example.com\nforged log line", PASSWORD),
        (EMAIL, ""),
        (EMAIL, "p" * 1025),
    ],
)
async def test_malformed_input_is_400_and_reaches_nobody(
    make_rig: MakeRig, fake: FakeOfficeRnD, email: str, password: str
) -> None:
    err = await refused(make_rig(), email, password)
    assert err.status == 400
    assert fake.requests == []


async def test_one_attempt_per_email_at_a_time(make_rig: MakeRig, fake: FakeOfficeRnD) -> None:
    rig = make_rig()
    first = asyncio.create_task(rig.login.login(EMAIL, "wrong-1", ADDRESS))
    await asyncio.sleep(0)  # the first attempt is now waiting on OfficeRnD
    second = await refused(rig, EMAIL.upper(), "wrong-2")
    assert (second.status, second.retry_after_s) == (429, 1.0)
    with pytest.raises(LoginRefused):
        await first
    assert signins(fake) == 1


async def test_no_password_reaches_a_log_line_or_an_error(
    make_rig: MakeRig, fake: FakeOfficeRnD, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    rig = make_rig()
    errors = [await refused(rig, EMAIL, f"{PASSWORD}-{n}") for n in range(6)]
    await rig.login.login(OTHER_EMAIL, OTHER_PASSWORD, ADDRESS)
    fake.fail_next("auth/signin", 503, times=2)
    errors.append(await refused(rig, OTHER_EMAIL, OTHER_PASSWORD))
    assert caplog.records
    texts = [caplog.text, *(repr(e.args) + str(e) for e in errors)]
    for text in texts:
        assert PASSWORD not in text
        assert OTHER_PASSWORD not in text
        assert EMAIL not in text  # redacted: "…lace@example.com"
    assert "…lace@example.com" in caplog.text
    assert all(r.body is None or r.body.get("password") != PASSWORD for r in fake.requests)
