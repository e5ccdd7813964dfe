"""Tests for the ``[officernd]`` configuration section and its ``[officernd.rules.<name>]`` tables."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from gateway.config import (
    ConfigError,
    ConfigErrors,
    OfficeRnDRuleEntry,
    OfficeRnDSection,
    config_to_dict,
    https_or_loopback,
    load_config,
    parse_config,
)
from gateway.model import CredentialKind
from gateway.officernd.mapping import MEMBER_STATUSES, MappingSettings


def officernd(**values: Any) -> OfficeRnDSection:
    """The [officernd] section parsed from ``values``."""
    return parse_config({"officernd": values}).officernd


def error(**values: Any) -> str:
    """The one error ``values`` in [officernd] raise."""
    with pytest.raises(ConfigError) as caught:
        parse_config({"officernd": values})
    assert not isinstance(caught.value, ConfigErrors), str(caught.value)
    return str(caught.value)


def test_defaults() -> None:
    section = parse_config({}).officernd
    assert section == OfficeRnDSection()
    assert section.poll_interval_s == 60
    assert section.reconcile_interval_s == 3600
    assert section.webhook_url == ""
    assert section.card_property == "luckey_cards"
    assert section.portal_access == "property:member_app"
    assert section.member_statuses_with_access == ("active", "drop-in")
    assert section.card_kinds == ("nfc_uid", "ntag424", "desfire")
    assert section.login is True
    assert section.session_minutes == 60
    assert section.rules == {}


def test_loading_a_configuration_does_not_import_the_connector() -> None:
    code = textwrap.dedent(
        """
        import sys
        from gateway.config import parse_config
        parse_config({"officernd": {"rules": {"a": {"plans": ["p"], "doors": ["d"]}}}})
        assert "gateway.officernd" not in sys.modules, "connector imported"
        assert "aiohttp" not in sys.modules, "aiohttp imported"
        """
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=30)


def test_every_value_set(tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text(
        textwrap.dedent(
            """
            [officernd]
            poll_interval_s = 0
            reconcile_interval_s = 300
            webhook_url = "https://gw.example.com/hooks/officernd"
            card_property = "badges"
            portal_access = "active_members"
            member_statuses_with_access = ["active"]
            card_kinds = ["desfire", "mech_key"]
            login = false
            session_minutes = 1440

            [officernd.rules.hot-desk]
            plans = ["Hot desk", "66000000000000000000000a"]
            doors = ["front", "lobby"]
            schedule = "business-hours"

            [officernd.rules.night_owls]
            plans = ["Night"]
            doors = ["front"]
            type = "smartphone"
            """
        )
    )
    section = load_config(path).officernd
    assert section == OfficeRnDSection(
        poll_interval_s=0,
        reconcile_interval_s=300,
        webhook_url="https://gw.example.com/hooks/officernd",
        card_property="badges",
        portal_access="active_members",
        member_statuses_with_access=("active",),
        card_kinds=("desfire", "mech_key"),
        login=False,
        session_minutes=1440,
        rules={
            "hot-desk": OfficeRnDRuleEntry(
                plans=("Hot desk", "66000000000000000000000a"),
                doors=("front", "lobby"),
                schedule="business-hours",
            ),
            "night_owls": OfficeRnDRuleEntry(plans=("Night",), doors=("front",), type="smartphone"),
        },
    )


def test_the_section_parses_back_from_plain_values() -> None:
    config = parse_config(
        {"officernd": {"rules": {"r": {"plans": ["P"], "doors": ["d"], "schedule": "s"}}}}
    )
    assert parse_config(config_to_dict(config)).officernd == config.officernd


@pytest.mark.parametrize("rule_type", ["card", "pin", "phone"])
def test_a_plan_rule_is_for_phones_keys_or_any_credential(rule_type: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(
            {"officernd": {"rules": {"r": {"plans": ["P"], "doors": ["d"], "type": rule_type}}}}
        )
    assert str(caught.value).startswith(f'officernd.rules.r.type: "{rule_type}" is not allowed')
    assert "card and PIN rules are one user's each" in str(caught.value)


@pytest.mark.parametrize("seconds", [0, 10, 11, 86_400])
def test_poll_interval_allowed(seconds: int) -> None:
    assert officernd(poll_interval_s=seconds).poll_interval_s == seconds


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {"poll_interval_s": 5},
            "officernd.poll_interval_s: 5 is not allowed; expected 0 (off) or 10 to 86400",
        ),
        (
            {"poll_interval_s": 9},
            "officernd.poll_interval_s: 9 is not allowed; expected 0 (off) or 10 to 86400",
        ),
        (
            {"poll_interval_s": -1},
            "officernd.poll_interval_s: -1 is not allowed; expected 0 (off) or 10 to 86400",
        ),
        (
            {"poll_interval_s": 86_401},
            "officernd.poll_interval_s: 86401 is not allowed; expected 0 (off) or 10 to 86400",
        ),
        (
            {"poll_interval_s": "60"},
            'officernd.poll_interval_s: "60" is not allowed; expected 0 (off) or 10 to 86400',
        ),
        (
            {"reconcile_interval_s": 299},
            "officernd.reconcile_interval_s: 299 is not allowed; "
            "expected an integer from 300 to 86400",
        ),
        (
            {"session_minutes": 4},
            "officernd.session_minutes: 4 is not allowed; expected an integer from 5 to 1440",
        ),
        (
            {"session_minutes": 1441},
            "officernd.session_minutes: 1441 is not allowed; expected an integer from 5 to 1440",
        ),
        ({"login": "yes"}, 'officernd.login: "yes" is not allowed; expected true or false'),
        (
            {"card_property": " "},
            'officernd.card_property: " " is not allowed; expected the name of a member '
            "custom property",
        ),
        (
            {"portal_access": "everyone"},
            'officernd.portal_access: "everyone" is not allowed; expected "property:<name>" '
            '(a member custom property), "active_members" or "nobody"',
        ),
        (
            {"portal_access": "property:"},
            'officernd.portal_access: "property:" is not allowed; expected "property:<name>" '
            '(a member custom property), "active_members" or "nobody"',
        ),
        (
            {"member_statuses_with_access": ["active", "former"]},
            'officernd.member_statuses_with_access[1]: "former" is not allowed; expected a '
            "status other than former (a former member never has access)",
        ),
        (
            {"member_statuses_with_access": ["actve"]},
            'officernd.member_statuses_with_access[0]: "actve" is not allowed; expected one of '
            '"active", "pending", "contact", "not_approved", "drop-in", "lead"',
        ),
        (
            {"member_statuses_with_access": "active"},
            'officernd.member_statuses_with_access: "active" is not allowed; expected a list of '
            "OfficeRnD member statuses",
        ),
        (
            {"card_kinds": ["nfc_uid", "ble_phone_key"]},
            'officernd.card_kinds[1]: "ble_phone_key" is not allowed; expected one of '
            '"nfc_uid", "ntag424", "desfire", "mech_key" (a phone key needs an enrolled public '
            "key, never a property)",
        ),
        (
            {"card_kinds": ["mifare"]},
            'officernd.card_kinds[0]: "mifare" is not allowed; expected one of "nfc_uid", '
            '"ntag424", "desfire", "mech_key"',
        ),
        (
            {"card_kinds": [1]},
            "officernd.card_kinds[0]: 1 is not allowed; expected a string",
        ),
        (
            {"rules": {"bad name": {"plans": ["P"], "doors": ["d"]}}},
            'officernd.rules.bad name: "bad name" is not allowed; expected a rule name of 1 to '
            "64 of A-Z a-z 0-9 _ -",
        ),
        (
            {"rules": {"r" * 65: {"plans": ["P"], "doors": ["d"]}}},
            f'officernd.rules.{"r" * 65}: "{"r" * 56}... is not allowed; expected a rule name '
            "of 1 to 64 of A-Z a-z 0-9 _ -",
        ),
        (
            {"rules": {"r": {"doors": ["d"]}}},
            "officernd.rules.r.plans: missing; expected a list of plan names or 24-hex plan ids "
            "(at least 1)",
        ),
        (
            {"rules": {"r": {"plans": [], "doors": ["d"]}}},
            "officernd.rules.r.plans: [] is not allowed; expected a list of plan names or 24-hex "
            "plan ids (at least 1)",
        ),
        (
            {"rules": {"r": {"plans": ["P"], "doors": []}}},
            "officernd.rules.r.doors: [] is not allowed; expected a list of door ids (at least 1)",
        ),
        (
            {"rules": {"r": {"plans": [" "], "doors": ["d"]}}},
            'officernd.rules.r.plans[0]: " " is not allowed; expected a plan name (1 to 256 '
            "characters) or a 24-hex plan id",
        ),
        (
            {"rules": {"r": {"plans": ["P"], "doors": ["front door"]}}},
            'officernd.rules.r.doors[0]: "front door" is not allowed; expected a door id of the '
            "site data",
        ),
        (
            {"rules": {"r": {"plans": ["P"], "doors": ["d"], "schedule": "-x"}}},
            'officernd.rules.r.schedule: "-x" is not allowed; expected a schedule id of the site '
            'data, or "" (at any time)',
        ),
        (
            {"rules": {"r": {"plan": ["P"], "plans": ["P"], "doors": ["d"]}}},
            "officernd.rules.r.plan: unknown key; allowed keys: plans, doors, schedule, type "
            "(did you mean 'plans'?)",
        ),
        (
            {"rules": {"r": 5}},
            "officernd.rules.r: 5 is not allowed; expected a table [officernd.rules.r] with keys "
            "plans, doors, schedule, type",
        ),
        (
            {"rules": ["r"]},
            "officernd.rules: ['r'] is not allowed; expected tables such as [officernd.rules.NAME]",
        ),
        (
            {"poll_intervals": 60},
            "officernd.poll_intervals: unknown key; allowed keys: poll_interval_s, "
            "reconcile_interval_s, webhook_url, card_property, portal_access, "
            "member_statuses_with_access, card_kinds, login, session_minutes, rules "
            "(did you mean 'poll_interval_s'?)",
        ),
    ],
)
def test_bad_values_are_named_with_what_is_allowed(values: dict[str, Any], message: str) -> None:
    assert error(**values) == message


@pytest.mark.parametrize(
    "url",
    [
        "",
        "https://gw.example.com/hooks/officernd",
        "https://gw.example.com:8443/site-1/hooks/officernd",
        "http://127.0.0.1:8080/hooks/officernd",
        "http://localhost/hooks/officernd",
        "http://[::1]:8080/hooks/officernd",
    ],
)
def test_webhook_urls_allowed(url: str) -> None:
    assert officernd(webhook_url=url).webhook_url == url


@pytest.mark.parametrize(
    "url",
    [
        "http://gw.example.com/hooks/officernd",
        "https://gw.example.com/hooks/other",
        "https://gw.example.com/hooks/officernd/",
        "https://gw.example.com/hooks/officernd?token=1",
        "https:///hooks/officernd",
        "https://user:pw@gw.example.com/hooks/officernd",
        "https://gw.example.com:port/hooks/officernd",
        "ftp://gw.example.com/hooks/officernd",
        "gw.example.com/hooks/officernd",
    ],
)
def test_webhook_urls_refused(url: str) -> None:
    message = error(webhook_url=url)
    assert message.startswith("officernd.webhook_url: ")
    assert "https:// URL ending in /hooks/officernd" in message
    assert '"" (polling only)' in message


def test_https_or_loopback() -> None:
    assert https_or_loopback("https://app.officernd.com/api/v2")
    assert https_or_loopback("http://127.0.0.1:1234/api/v2")
    assert not https_or_loopback("http://127.0.0.2/api/v2")
    assert not https_or_loopback("http://app.officernd.com/api/v2")
    assert not https_or_loopback("")


def test_several_problems_are_all_reported() -> None:
    with pytest.raises(ConfigErrors) as caught:
        parse_config(
            {
                "officernd": {
                    "poll_interval_s": 3,
                    "session_minutes": 0,
                    "rules": {"r": {"plans": [], "doors": []}},
                }
            }
        )
    paths = [err.key_path for err in caught.value.errors]
    assert paths == [
        "officernd.poll_interval_s",
        "officernd.session_minutes",
        "officernd.rules.r.plans",
        "officernd.rules.r.doors",
    ]


def test_the_documented_statuses_are_the_mappings() -> None:
    from gateway.config import OFFICERND_MEMBER_STATUSES

    assert frozenset(OFFICERND_MEMBER_STATUSES) == MEMBER_STATUSES


def test_mapping_settings() -> None:
    section = officernd(
        card_property="badges",
        portal_access="property:phone_ok",
        member_statuses_with_access=["active", "pending", "active"],
        card_kinds=["desfire", "mech_key"],
    )
    assert section.mapping_settings() == MappingSettings(
        card_property="badges",
        portal_access="property:phone_ok",
        member_statuses_with_access=frozenset({"active", "pending"}),
        card_kinds=frozenset({CredentialKind.DESFIRE, CredentialKind.MECHATRONIC_KEY}),
    )
    assert OfficeRnDSection().mapping_settings() == MappingSettings()
