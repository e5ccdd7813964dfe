"""Guest invitations end to end: created by the operator, redeemed by phones, decided, deleted.

Everything goes over real HTTP on loopback to a started gateway with its real SQLite cache; the
phones are P-256 keys, and on the virtual backend the reference phone app through the BLE
handshake (and through the door's simulated radio).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import ssl
from datetime import datetime, timedelta
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import make_mocked_request

from drivers.base import CredentialRead
from drivers.reference_phone import ReferencePhone
from gateway.app import Gateway
from gateway.ble_protocol import ReaderHandshake
from gateway.credentials import phone_key_id
from gateway.invitations import (
    CODE_ALPHABET,
    REDEEM_FAILURES_PER_ADDRESS,
    UNKNOWN_CODE,
    code_hash,
    new_code,
    normalise_code,
)
from gateway.model import AssuranceLevel, CredentialKind, Reason
from gateway.web_clients import private_link
from tests.conftest import (
    DEFAULT_NOW,
    ROME,
    Clock,
    ConfigFactory,
    GatewayFactory,
    pick_free_port,
    read_outbox,
)
from tests.gateway.sitebuilder import phone_key

#: Tuesday 1 December 2026 (the default clock's day) to Saturday 5 December, in Rome.
START = datetime(2026, 12, 1, 8, 0, tzinfo=ROME)
END = datetime(2026, 12, 5, 0, 0, tzinfo=ROME)
INVITATION = {
    "name": "Grace Hopper",
    "doors": ["front", "office-3"],
    "valid_from": START.isoformat(),
    "valid_until": END.isoformat(),
    "max_devices": 2,
    "days": ["tue", "wed"],
    "time_slot": {"start": "09:00", "end": "18:00"},
}
LEFT_OUT = object()
CODE_SHAPE = re.compile(rf"[{CODE_ALPHABET}]{{4}}-[{CODE_ALPHABET}]{{4}}-[{CODE_ALPHABET}]{{4}}")


class Api:
    """The gateway's web app over HTTP, as this machine (the admin guard lets it through)."""

    def __init__(self, session: aiohttp.ClientSession, base: str) -> None:
        self.session = session
        self.base = base

    async def call(
        self, method: str, path: str, body: Any = None, **kwargs: Any
    ) -> tuple[int, Any]:
        async with self.session.request(method, self.base + path, json=body, **kwargs) as response:
            if response.content_type != "application/json":
                return response.status, await response.text()
            return response.status, await response.json()

    async def create(self, **changes: Any) -> dict[str, Any]:
        status, body = await self.call("POST", "/api/invitations", INVITATION | changes)
        assert status == 201, body
        return dict(body)

    async def redeem(self, code: str, key: str) -> tuple[int, Any]:
        return await self.call("POST", "/api/invitations/redeem", {"code": code, "public_key": key})

    async def decide(self, door: str, key: str, at: datetime | None = None) -> dict[str, Any]:
        value = phone_key_id(bytes.fromhex(key)).hex().upper()
        body = {"door": door, "credential": f"ble_phone_key:{value}"}
        if at is not None:
            body["at"] = at.isoformat()
        status, answer = await self.call("POST", "/api/decide", body)
        assert status == 200, answer
        return dict(answer["decision"])


@pytest.fixture
async def gw(start_gateway: GatewayFactory) -> Gateway:
    """A gateway on simulated hardware with the demo site."""
    return await start_gateway()


@pytest.fixture
async def api(gw: Gateway) -> Any:
    async with aiohttp.ClientSession() as session:
        yield Api(session, f"http://127.0.0.1:{gw.web.port}")


def guest_keys(gw: Gateway, invitation_id: str) -> list[str]:
    """The ids of the phone keys the invitation's guest holds in the cache."""
    return sorted(
        c.id
        for c in gw.cache.view.credentials[CredentialKind.BLE_PHONE_KEY]
        if c.user_id == f"guest:{invitation_id}"
    )


# --- codes ----------------------------------------------------------------------------------------


def test_a_code_is_twelve_unambiguous_characters_in_three_groups() -> None:
    codes = {new_code() for _ in range(200)}
    assert len(codes) == 200
    assert all(CODE_SHAPE.fullmatch(code) for code in codes)
    assert not set("01OIL") & set(CODE_ALPHABET)
    assert len(CODE_ALPHABET) ** 12 > 2**59


def test_the_code_hash_ignores_case_spaces_and_hyphens() -> None:
    expected = hashlib.sha256(b"K7QM3XPA9TWE").hexdigest()
    for typed in ("K7QM-3XPA-9TWE", "k7qm 3xpa 9twe", " K7QM3XPA9TWE\n", "k7-qm3x-pa9twe"):
        assert normalise_code(typed) == "K7QM3XPA9TWE"
        assert code_hash(typed) == expected
    assert code_hash("K7QM-3XPA-9TWF") != expected


# --- end to end -----------------------------------------------------------------------------------


async def test_an_invitation_from_creation_to_deletion(gw: Gateway, api: Api) -> None:
    created = await api.create()
    code = created["code"]
    assert CODE_SHAPE.fullmatch(code)
    assert created["code_sha256"] == code_hash(code)
    assert created["devices_used"] == 0
    invitation_id = created["id"]
    assert invitation_id in gw.cache.view.invitations

    # The list never shows the code (nor its hash) again.
    status, listed = await api.call("GET", "/api/invitations")
    assert status == 200
    [shown] = listed["invitations"]
    assert shown["id"] == invitation_id
    assert (shown["name"], shown["max_devices"], shown["devices_used"]) == ("Grace Hopper", 2, 0)
    assert code not in json.dumps(listed)
    assert normalise_code(code) not in json.dumps(listed)
    assert "code_sha256" not in shown

    # Phone A redeems it (typed in lower case, without hyphens: the same code).
    phone_a = phone_key(21)
    status, redeemed = await api.redeem(normalise_code(code).lower(), phone_a)
    assert status == 200, redeemed
    assert redeemed["credential_id"] == f"inv-{invitation_id}-1"
    assert redeemed["valid_from"] == START.isoformat()
    assert redeemed["valid_until"] == END.isoformat()
    assert redeemed["doors"] == [
        {"id": "front", "name": "Front door"},
        {"id": "office-3", "name": "Private office 3"},
    ]
    assert redeemed["days"] == ["tue", "wed"]
    assert redeemed["time_slot"] == {"start": "09:00", "end": "18:00"}
    stored = gw.cache.view.credential(
        CredentialKind.BLE_PHONE_KEY, phone_key_id(bytes.fromhex(phone_a)).hex().upper()
    )
    assert stored is not None
    assert (stored.id, stored.user_id) == (f"inv-{invitation_id}-1", f"guest:{invitation_id}")
    assert stored.public_key == bytes.fromhex(phone_a)
    assert (stored.valid_from, stored.valid_until) == (None, None)  # the invitation's own

    # Its phone key opens the invited doors, on the invited days, in the slot; nothing else.
    granted = await api.decide("front", phone_a)
    assert (granted["granted"], granted["reason"]) == (True, "granted")
    assert (granted["user"], granted["rule"]) == (
        f"guest:{invitation_id}",
        f"invitation:{invitation_id}",
    )
    assert (await api.decide("office-3", phone_a))["granted"]
    assert (await api.decide("server-room", phone_a))["reason"] == "no_rule_for_door"
    evening = datetime(2026, 12, 1, 19, 0, tzinfo=ROME)
    assert (await api.decide("front", phone_a, evening))["reason"] == "outside_time_slot"
    thursday = datetime(2026, 12, 3, 10, 0, tzinfo=ROME)
    assert (await api.decide("front", phone_a, thursday))["reason"] == "day_not_allowed"
    after = datetime(2026, 12, 8, 10, 0, tzinfo=ROME)  # a Tuesday, after the end
    assert (await api.decide("front", phone_a, after))["reason"] == "user_expired"

    # A second phone takes the last device; a third is refused; the first again is the same.
    status, second = await api.redeem(code, phone_key(22))
    assert status == 200
    assert second["credential_id"] == f"inv-{invitation_id}-2"
    status, refused = await api.redeem(code, phone_key(23))
    assert status == 409
    assert "all 2 device(s)" in refused["error"]
    status, again = await api.redeem(code, phone_a)
    assert status == 200
    assert again["credential_id"] == f"inv-{invitation_id}-1"
    assert guest_keys(gw, invitation_id) == [f"inv-{invitation_id}-1", f"inv-{invitation_id}-2"]
    status, listed = await api.call("GET", "/api/invitations")
    assert listed["invitations"][0]["devices_used"] == 2

    # Deleting it ends the access at once: the phone keys are gone, the code is unknown.
    status, _ = await api.call("DELETE", f"/api/invitations/{invitation_id}")
    assert status == 204
    assert invitation_id not in gw.cache.view.invitations
    assert guest_keys(gw, invitation_id) == []
    assert (await api.decide("front", phone_a))["reason"] == "unknown_credential"
    status, gone = await api.redeem(code, phone_key(24))
    assert (status, gone) == (404, {"error": UNKNOWN_CODE})
    status, _ = await api.call("DELETE", f"/api/invitations/{invitation_id}")
    assert status == 404
    status, listed = await api.call("GET", "/api/invitations")
    assert listed == {"invitations": []}

    # The cloud is told everything it must store, and never the code.
    events = [(kind, data) for _, kind, data in read_outbox(gw.config.gateway.state_dir)]
    created_events = [d for k, d in events if k == "invitation.created"]
    assert [d["invitation"]["id"] for d in created_events] == [invitation_id]
    assert created_events[0]["invitation"]["code_sha256"] == code_hash(code)
    redeemed_events = [d for k, d in events if k == "invitation.redeemed"]
    assert [d["credential"]["id"] for d in redeemed_events] == [
        f"inv-{invitation_id}-1",
        f"inv-{invitation_id}-2",
    ]
    assert redeemed_events[0]["credential"]["public_key"] == phone_a
    assert redeemed_events[0]["credential"]["user"] == f"guest:{invitation_id}"
    deleted_events = [d for k, d in events if k == "invitation.deleted"]
    assert deleted_events == [
        {
            "invitation": invitation_id,
            "user": f"guest:{invitation_id}",
            "credentials": [f"inv-{invitation_id}-1", f"inv-{invitation_id}-2"],
        }
    ]
    assert normalise_code(code) not in json.dumps(events)
    assert code not in json.dumps(events)


async def test_concurrent_redemptions_of_the_last_device_let_exactly_one_through(
    gw: Gateway, api: Api
) -> None:
    created = await api.create(max_devices=1)
    answers = await asyncio.gather(
        *(api.redeem(created["code"], phone_key(30 + n)) for n in range(6))
    )
    statuses = sorted(status for status, _ in answers)
    assert statuses == [200, 409, 409, 409, 409, 409]
    assert len(guest_keys(gw, created["id"])) == 1


async def test_the_same_phone_redeeming_concurrently_gets_one_credential(
    gw: Gateway, api: Api
) -> None:
    created = await api.create(max_devices=3)
    answers = await asyncio.gather(*(api.redeem(created["code"], phone_key(40)) for _ in range(4)))
    assert {status for status, _ in answers} == {200}
    assert {body["credential_id"] for _, body in answers} == {f"inv-{created['id']}-1"}
    assert guest_keys(gw, created["id"]) == [f"inv-{created['id']}-1"]


async def test_a_phone_enrolled_for_someone_else_cannot_redeem(gw: Gateway, api: Api) -> None:
    key = phone_key(41)
    await gw.enrolment.enrol_phone("ada", bytes.fromhex(key))
    created = await api.create()
    status, refused = await api.redeem(created["code"], key)
    assert status == 409
    assert "already in use here" in refused["error"]
    assert guest_keys(gw, created["id"]) == []


async def test_an_ended_invitation_answers_410(gw: Gateway, api: Api, clock: Clock) -> None:
    created = await api.create()
    clock.now = END
    status, body = await api.redeem(created["code"], phone_key(50))
    assert status == 410
    assert "ended" in body["error"]
    clock.now = END - timedelta(seconds=1)
    assert (await api.redeem(created["code"], phone_key(50)))[0] == 200


async def test_an_invitation_not_started_yet_can_be_redeemed_before_it_opens(
    gw: Gateway, api: Api
) -> None:
    later = DEFAULT_NOW + timedelta(days=7)
    created = await api.create(
        valid_from=later.isoformat(), valid_until=(later + timedelta(days=1)).isoformat()
    )
    status, _ = await api.redeem(created["code"], phone_key(51))
    assert status == 200
    assert (await api.decide("front", phone_key(51)))["reason"] == "user_not_yet_valid"


@pytest.mark.parametrize(
    ("changes", "field", "message"),
    [
        (
            {"valid_until": START.isoformat(), "valid_from": END.isoformat()},
            "valid_until",
            "must be after valid_from",
        ),
        ({"max_devices": 0}, "max_devices", "0"),
        ({"max_devices": 101}, "max_devices", "101"),
        ({"doors": []}, "doors", "at least one door"),
        ({"doors": ["nowhere"]}, "doors", "'nowhere' is not a known door"),
        (
            {"door_tags": ["no-such-tag"], "doors": []},
            "door_tags",
            "'no-such-tag' is not a known tag",
        ),
        ({"name": ""}, "name", "non-empty string"),
        ({"name": None}, "name", "missing required field"),
        ({"name": LEFT_OUT}, "name", "missing required field"),
        ({"valid_until": LEFT_OUT}, "valid_until", "missing required field"),
        ({"valid_from": "2026-12-01T08:00"}, "valid_from", "UTC offset"),
        ({"days": []}, "days", "at least one day"),
        ({"days": ["someday"]}, "days[0]", "someday"),
        ({"time_slot": {"start": "09:00"}}, "time_slot.end", "missing required field"),
        ({"code": "ABCD-EFGH-JKMN"}, "code", "unknown field"),
        ({"code_sha256": "0" * 64}, "code_sha256", "unknown field"),
    ],
)
async def test_a_bad_invitation_is_refused_naming_the_field(
    gw: Gateway, api: Api, changes: dict[str, Any], field: str, message: str
) -> None:
    sent = {k: v for k, v in (INVITATION | changes).items() if v is not LEFT_OUT}
    status, body = await api.call("POST", "/api/invitations", sent)
    assert status == 400, body
    assert body["field"] == field
    assert message in body["error"]
    assert gw.cache.view.invitations == {}


async def test_a_create_body_that_is_not_a_json_object_is_refused(api: Api) -> None:
    status, body = await api.call("POST", "/api/invitations", ["name"])
    assert status == 400
    assert "JSON object" in body["error"]
    status, body = await api.call("POST", "/api/invitations", data="name=x")
    assert status == 400


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        ({"public_key": phone_key(1)}, "code", "'code' is required"),
        ({"code": 12, "public_key": phone_key(1)}, "code", "'code' is required"),
        ({"code": "ABCD"}, "public_key", "'public_key' is required"),
        ({"code": "ABCD", "public_key": "zz"}, "public_key", "must be hex"),
        ({"code": "ABCD", "public_key": phone_key(1)[:-2]}, "public_key", "65-byte"),
        ({"code": "ABCD", "public_key": "04" + "00" * 64}, "public_key", "not a point on P-256"),
        ({"code": "ABCD", "public_key": "ab" * 200}, "public_key", "'public_key' is required"),
    ],
)
async def test_a_bad_redemption_is_refused_naming_the_field(
    gw: Gateway, api: Api, body: dict[str, Any], field: str, message: str
) -> None:
    created = await api.create()
    if body.get("code") == "ABCD":
        body = body | {"code": created["code"]}  # the right code: the key alone is at fault
    status, answer = await api.call("POST", "/api/invitations/redeem", body)
    assert status == 400, answer
    assert answer["field"] == field
    assert message in answer["error"]
    assert guest_keys(gw, created["id"]) == []


async def test_wrong_codes_from_one_address_are_limited(
    gw: Gateway, api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    created = await api.create()
    with caplog.at_level(logging.WARNING, logger="gateway.web_invitations"):
        for n in range(REDEEM_FAILURES_PER_ADDRESS):
            status, body = await api.redeem(f"WRNG-CODE-{n:04d}", phone_key(60))
            assert (status, body) == (404, {"error": UNKNOWN_CODE})
        await api.redeem("WRNG-CODE-9999", phone_key(60))
    # The budget spent is logged once; the refusals before and after it are not.
    assert [r.getMessage() for r in caplog.records] == [
        "127.0.0.1 presented too many wrong invitation codes: refused for a while"
    ]
    # Counted before the lookup: now even the right code gets no answer.
    async with api.session.post(
        f"{api.base}/api/invitations/redeem",
        json={"code": created["code"], "public_key": phone_key(60)},
    ) as response:
        assert response.status == 429
        assert int(response.headers["Retry-After"]) > 0
        assert "too many wrong invitation codes" in (await response.json())["error"]
    assert guest_keys(gw, created["id"]) == []


async def test_right_codes_and_bad_keys_do_not_spend_the_budget(gw: Gateway, api: Api) -> None:
    created = await api.create(max_devices=1)
    await api.redeem(created["code"], phone_key(61))
    for _ in range(REDEEM_FAILURES_PER_ADDRESS + 2):
        assert (await api.redeem(created["code"], phone_key(62)))[0] == 409
        assert (await api.redeem(created["code"], "zz"))[0] == 400
    assert (await api.redeem(created["code"], phone_key(61)))[0] == 200


async def test_the_code_is_never_logged(
    gw: Gateway, api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG):
        created = await api.create()
        await api.redeem(created["code"], phone_key(70))
        await api.redeem(created["code"].lower(), phone_key(71))
        await api.redeem("WRNG-CODE-0000", phone_key(72))
        await api.call("GET", "/api/invitations")
        await api.call("DELETE", f"/api/invitations/{created['id']}")
    code = created["code"]
    assert "invitation" in caplog.text  # the operations are logged...
    for form in (code, normalise_code(code), code.lower(), normalise_code(code).lower()):
        assert form not in caplog.text  # ...without the code


async def test_invitations_and_their_phones_survive_a_restart(
    start_gateway: GatewayFactory, gateway_config: ConfigFactory
) -> None:
    config = gateway_config()
    first = await start_gateway(config)
    async with aiohttp.ClientSession() as session:
        api = Api(session, f"http://127.0.0.1:{first.web.port}")
        created = await api.create()
        assert (await api.redeem(created["code"], phone_key(80)))[0] == 200
    await first.stop()
    again = await start_gateway(config)
    assert created["id"] in again.cache.view.invitations
    assert guest_keys(again, created["id"]) == [f"inv-{created['id']}-1"]
    async with aiohttp.ClientSession() as session:
        api = Api(session, f"http://127.0.0.1:{again.web.port}")
        assert (await api.decide("front", phone_key(80)))["granted"]
        assert (await api.redeem(created["code"], phone_key(80)))[1]["credential_id"] == (
            f"inv-{created['id']}-1"
        )


# --- who may call what ----------------------------------------------------------------------------


async def test_operator_routes_need_the_admin_but_redeeming_needs_no_account(
    start_gateway: GatewayFactory, gateway_config: ConfigFactory
) -> None:
    gw = await start_gateway(gateway_config(web={"host": "0.0.0.0", "allow_remote": True}))
    assert gw.web_tls is not None
    invitation, code = await gw.invitations.create(
        "Guest", doors=["front"], valid_from=START, valid_until=END, max_devices=1
    )
    trust = ssl.create_default_context(cafile=gw.web_tls.cert)
    base = f"https://127.0.0.1:{gw.web.port}"
    async with aiohttp.ClientSession() as session:
        for method, path in (
            ("GET", "/api/invitations"),
            ("POST", "/api/invitations"),
            ("DELETE", f"/api/invitations/{invitation.id}"),
        ):
            async with session.request(method, base + path, json=INVITATION, ssl=trust) as response:
                assert response.status == 401, path
        body = {"code": code, "public_key": phone_key(90)}
        async with session.post(f"{base}/api/invitations/redeem", json=body, ssl=trust) as response:
            assert response.status == 200
    assert invitation.id in gw.cache.view.invitations
    assert len(gw.cache.view.invitations) == 1


async def test_the_public_listener_redeems_and_offers_nothing_else(
    start_gateway: GatewayFactory, gateway_config: ConfigFactory
) -> None:
    public = pick_free_port()
    gw = await start_gateway(gateway_config(web={"public_port": public}))
    _, code = await gw.invitations.create(
        "Guest", doors=["front"], valid_from=START, valid_until=END
    )
    async with aiohttp.ClientSession() as session:
        api = Api(session, f"http://127.0.0.1:{public}")
        status, body = await api.redeem(code, phone_key(91))
        assert status == 200, body
        assert (await api.call("GET", "/api/invitations"))[0] == 404
        assert (await api.call("POST", "/api/invitations", INVITATION))[0] in (404, 405)


def test_redeeming_needs_https_or_this_machine() -> None:
    class Transport:
        def __init__(self, peer: str) -> None:
            self.peer = peer

        def get_extra_info(self, name: str, default: Any = None) -> Any:
            return (self.peer, 50000) if name == "peername" else default

        def is_closing(self) -> bool:
            return False

    def request(peer: str) -> Any:
        return make_mocked_request("POST", "/api/invitations/redeem", transport=Transport(peer))

    assert private_link(request("127.0.0.1"))
    assert private_link(request("::1"))
    assert not private_link(request("203.0.113.5"))
    assert not private_link(request("192.168.1.20"))


async def test_behind_a_trusted_proxy_failures_count_per_client(
    start_gateway: GatewayFactory, gateway_config: ConfigFactory
) -> None:
    gw = await start_gateway(gateway_config(web={"trust_forwarded_for": True}))
    async with aiohttp.ClientSession() as session:
        api = Api(session, f"http://127.0.0.1:{gw.web.port}")
        spent = {"X-Forwarded-For": "198.51.100.7, 203.0.113.5"}  # the proxy's hop is last
        body = {"code": "WRNG-CODE-0000", "public_key": phone_key(1)}
        path = "/api/invitations/redeem"
        for _ in range(REDEEM_FAILURES_PER_ADDRESS):
            assert (await api.call("POST", path, body, headers=spent))[0] == 404
        assert (await api.call("POST", path, body, headers=spent))[0] == 429
        other = {"X-Forwarded-For": "203.0.113.6"}
        assert (await api.call("POST", path, body, headers=other))[0] == 404
        assert (await api.call("POST", path, body))[0] == 404  # the proxy itself


async def test_the_page_and_its_script_are_served_without_inline_script(api: Api) -> None:
    async with api.session.get(f"{api.base}/invitations") as response:
        assert response.status == 200
        assert "script-src 'self'" in response.headers["Content-Security-Policy"]
        page = await response.text()
    assert '<script src="/invitations.js"></script>' in page
    assert '<script src="/admin.js"></script>' in page
    assert not re.search(r"<script>(?!</script>)", page)
    assert " on" + "click=" not in page
    async with api.session.get(f"{api.base}/invitations.js") as response:
        assert response.status == 200
        assert response.content_type == "application/javascript"
        script = await response.text()
    assert "adminFetch" in script
    assert "/api/invitations" in script


# --- guest phones at the door ---------------------------------------------------------------------


@pytest.fixture
async def virtual(start_gateway: GatewayFactory, gateway_config: ConfigFactory) -> Gateway:
    """A gateway on the virtual backend: its own BLE reader key, the demo site."""
    return await start_gateway(gateway_config(hardware={"backend": "virtual"}))


def phone_exchange(gw: Gateway, phone: ReferencePhone, door: str) -> CredentialRead:
    """The BLE driver's GATT flow with the reference phone app, without the radio."""
    identity = gw.secrets.reader
    assert identity is not None
    handshake = ReaderHandshake(identity, gw.ble_challenges.issue(16), phone.ephemeral_id)
    phone.on_write(handshake.hello())
    phone.on_write(handshake.prove(phone.read_reply()))
    claim = handshake.finish(phone.read_reply())
    return CredentialRead(door, "ble_phone_key", claim.value, claim.proof)


def reference_phone(gw: Gateway) -> ReferencePhone:
    identity = gw.secrets.reader
    assert identity is not None
    return ReferencePhone.generate({identity.reader_id: identity.public_key})


async def test_a_guest_phone_proves_itself_and_opens_only_the_invited_door(
    virtual: Gateway,
) -> None:
    gw = virtual
    phone = reference_phone(gw)
    async with aiohttp.ClientSession() as session:
        api = Api(session, f"http://127.0.0.1:{gw.web.port}")
        created = await api.create(doors=["server-room"], days=None, time_slot=None)
        status, body = await api.redeem(created["code"], phone.public_key_bytes.hex())
        assert status == 200, body

        decision = await gw.entry.handle(phone_exchange(gw, phone, "server-room"))
        assert (decision.granted, decision.assurance) == (True, AssuranceLevel.HIGH)
        assert decision.credential_id == body["credential_id"]
        assert gw.doors.unlocked("server-room")
        elsewhere = await gw.entry.handle(phone_exchange(gw, phone, "front"))
        assert elsewhere.reason is Reason.NO_RULE_FOR_DOOR

        assert (await api.call("DELETE", f"/api/invitations/{created['id']}"))[0] == 204
    deleted = await gw.entry.handle(phone_exchange(gw, phone, "server-room"))
    assert deleted.reason is Reason.UNKNOWN_CREDENTIAL


async def test_a_guest_phone_opens_the_door_through_the_simulated_radio(virtual: Gateway) -> None:
    gw = virtual
    phone = reference_phone(gw)
    invitation, code = await gw.invitations.create(
        "Guest", doors=["front"], valid_from=START, valid_until=END
    )
    result = await gw.invitations.redeem(code, phone.public_key_bytes)
    # The simulator's phones are made for users it enrols; this one is the guest's own app.
    gw.simulator._phones[result.credential.value] = phone
    decision = await gw.simulator.present_phone("front", result.credential.value)
    assert (decision.granted, decision.user_id) == (True, invitation.guest_id)
    assert decision.rule_id == invitation.rule_id
    await gw.invitations.delete(invitation.id)
    refused = await gw.simulator.present_phone("front", result.credential.value)
    assert refused.reason is Reason.UNKNOWN_CREDENTIAL
