"""Tests for gateway.config: defaults, the example file, and one clear error per mistake."""

from __future__ import annotations

import dataclasses
import json
import tomllib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import gateway.config
from gateway.config import (
    BoardEntry,
    CloudSection,
    Config,
    ConfigError,
    ConfigErrors,
    DemoSection,
    DoorEntry,
    EventsSection,
    GatewaySection,
    HardwareSection,
    WebSection,
    config_to_dict,
    load_config,
    parse_config,
)
from gateway.proximity import proximity_threshold

EXAMPLE = Path(gateway.config.__file__).parent / "data" / "example.toml"
DOCS = Path(__file__).parents[2] / "docs" / "configuration.md"
SECTIONS = (
    "allowed sections: gateway, web, hardware, doors, events, journal, keypad, nfc, ble, "
    "cloud, officernd, demo"
)
WEB_KEYS = (
    "allowed keys: host, port, allow_remote, public_port, public_host, trust_forwarded_for, "
    "require_admin_2fa"
)
LEVELS = 'one of "debug", "info", "warning", "error"'


def write(directory: Path, text: str, name: str = "gateway.toml") -> Path:
    """Write ``text`` as a config file in ``directory`` and return its path."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(text, encoding="utf-8")
    return path


def single_error(directory: Path, text: str) -> ConfigError:
    """Load ``text`` from a real file and return the one error it must raise."""
    with pytest.raises(ConfigError) as info:
        load_config(write(directory, text))
    assert not isinstance(info.value, ConfigErrors), str(info.value)
    return info.value


def test_defaults_without_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert load_config(None) == Config(
        gateway=GatewaySection(state_dir=tmp_path / "var", log_level="info", log_format="json"),
        web=WebSection(host="127.0.0.1", port=8080, allow_remote=False),
        hardware=HardwareSection(backend="virtual"),
        events=EventsSection(max_rows=200_000, batch_max=256),
        cloud=cloud_files(tmp_path),
        demo=DemoSection(seed=True),
        source=None,
    )


def cloud_files(base: Path) -> CloudSection:
    """The default [cloud] section, its files resolved against ``base``."""
    return CloudSection(
        ca_file=base / "cloud/ca.pem",
        cert_file=base / "cloud/gateway.pem",
        key_file=base / "cloud/gateway.key",
        signing_key_file=base / "cloud/cloud-signing.pub",
    )


def test_empty_file_gives_defaults_resolved_against_its_directory(tmp_path: Path) -> None:
    path = write(tmp_path / "etc", "")
    config = load_config(path)
    assert config.source == path
    assert config.gateway.state_dir == tmp_path / "etc" / "var"
    assert config.web == WebSection()


def test_example_file_is_complete_and_states_the_defaults() -> None:
    config = load_config(EXAMPLE)
    assert config.source == EXAMPLE.absolute()
    defaults = parse_config({}, base_dir=EXAMPLE.parent)
    assert config_to_dict(config) == config_to_dict(defaults)
    # Every key of the schema appears in the example, so it documents all of them.
    raw = tomllib.loads(EXAMPLE.read_text(encoding="utf-8"))
    assert {s: set(keys) for s, keys in raw.items()} == {
        s: set(keys) for s, keys in config_to_dict(defaults).items()
    }


def test_every_key_is_documented() -> None:
    text = DOCS.read_text(encoding="utf-8")
    for section, keys in config_to_dict(load_config(None)).items():
        assert f"[{section}]" in text
        for key in keys:
            assert f"`{section}.{key}`" in text, f"{section}.{key} is not documented"
    for field in dataclasses.fields(DoorEntry):
        assert f"`doors.<id>.{field.name}`" in text, f"doors.<id>.{field.name} is not documented"


# --- [hardware] boards and [doors] ---------------------------------------------------------


def test_a_bus_of_boards_and_door_settings(tmp_path: Path) -> None:
    config = load_config(
        write(
            tmp_path,
            """
            [hardware]
            backend = "board"
            bus = "socket://127.0.0.1:7000"
            baudrate = 57600
            rs485 = true
            [[hardware.boards]]
            address = 1
            doors = ["front", "lobby"]
            [[hardware.boards]]
            address = 7
            doors = ["server-room"]
            [doors.front]
            wiring = "fail_safe"
            fallback = "unlocked"
            held_open_s = 30
            """,
        )
    )
    assert config.hardware.boards == (
        BoardEntry(1, ("front", "lobby")),
        BoardEntry(7, ("server-room",)),
    )
    assert config.doors == {
        "front": DoorEntry(wiring="fail_safe", fallback="unlocked", held_open_s=30.0)
    }
    assert parse_config(config_to_dict(config), base_dir=tmp_path) == dataclasses.replace(
        config, source=None
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            '[hardware]\nbackend = "board"\nbus = "/dev/ttyUSB0"\n'
            '[[hardware.boards]]\naddress = 1\ndoors = ["front", "lobby"]\n'
            '[doors.frnt]\nwiring = "fail_safe"',
            "doors.frnt: no board drives this door; list it in [[hardware.boards]] "
            "(doors there: front, lobby)",
        ),
        (
            '[hardware]\nbackend = "gpio"\n[doors.front]\nwiring = "fail_safe"',
            'doors.front.gpio_line: "" is not allowed; expected the relay\'s line name '
            '(with backend "gpio" every [doors] table needs one)',
        ),
        (
            '[doors.front]\nfallback = "unlocked"',
            "doors.front: a fail_safe lock or an unlocked fallback needs the door listed in "
            "[[hardware.boards]], so its board is told its fallback level at start",
        ),
    ],
)
def test_door_tables_must_name_doors_this_gateway_drives(
    tmp_path: Path, text: str, message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    assert str(info.value) == message


def test_an_enabled_cloud_link_needs_its_identity_broker_and_https_endpoint(
    tmp_path: Path,
) -> None:
    with pytest.raises(ConfigErrors) as info:
        load_config(write(tmp_path, '[cloud]\nenabled = true\napi_url = "http://cloud.example"\n'))
    assert str(info.value).splitlines() == [
        'cloud.gateway_id: "" is not allowed; expected 1 to 64 of A-Z a-z 0-9 _ - '
        "(the certificate's CN)",
        'cloud.mqtt_host: "" is not allowed; expected the MQTT broker\'s host name or address',
        'cloud.api_url: "http://cloud.example" is not allowed; expected an https:// URL '
        "(the snapshot endpoint)",
    ]


def test_door_tables_for_wired_doors_are_accepted(tmp_path: Path) -> None:
    config = load_config(
        write(
            tmp_path,
            '[hardware]\nbackend = "gpio"\n[doors.front]\ngpio_line = "GPIO17"\n'
            'wiring = "fail_safe"\n',
        )
    )
    assert config.doors["front"].gpio_line == "GPIO17"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            '[hardware]\nbackend = "board"\n[[hardware.boards]]\naddress = 1\ndoors = ["a"]',
            'hardware.bus: "" is not allowed; expected the serial device or socket:// URL of the door bus',
        ),
        (
            '[hardware]\nbackend = "board"\nbus = "/dev/ttyUSB0"',
            'hardware.boards: "[]" is not allowed; expected at least one [[hardware.boards]] entry',
        ),
        (
            '[hardware]\nbus = "/dev/ttyUSB0"',
            'hardware.bus: "/dev/ttyUSB0" is not allowed; expected "" (the virtual boards make their own pty)',
        ),
        (
            '[[hardware.boards]]\ndoors = ["a"]',
            "hardware.boards[0].address: missing; expected an integer from 1 to 247",
        ),
        (
            '[[hardware.boards]]\naddress = 248\ndoors = ["a"]',
            "hardware.boards[0].address: 248 is not allowed; expected an integer from 1 to 247",
        ),
        (
            "[[hardware.boards]]\naddress = 1\ndoors = []",
            "hardware.boards[0].doors: [] is not allowed; expected a list of door ids (1 to 16 items)",
        ),
        (
            "[[hardware.boards]]\naddress = 1\ndoors = [1]",
            "hardware.boards[0].doors[0]: 1 is not allowed; expected a string",
        ),
        (
            '[[hardware.boards]]\naddress = 1\ndoors = ["a"]\n'
            '[[hardware.boards]]\naddress = 1\ndoors = ["b", "a"]',
            "hardware.boards[1].address: 1 is not allowed; expected an address not used twice\n"
            'hardware.boards[1].doors: "a" is not allowed; expected a door on one board only, once',
        ),
        (
            "[hardware]\nheartbeat_interval_ms = 2000",
            "hardware.supervision_timeout_ms: 3000 is not allowed; "
            "expected at least 3 heartbeat intervals (6000)",
        ),
        (
            "[doors]\nfront = 5",
            "doors.front: 5 is not allowed; expected a table [doors.front] with keys wiring, "
            "fallback, contact, has_contact, relock_on_close, held_open_s, unlock_s, rex_unlocks, "
            "rex_grace_s, gpio_line, gpio_active_low, nfc_reader, ble_proximity",
        ),
        (
            "[doors.front]\nheld_open_s = 5",
            "doors.front.held_open_s: 5 is not allowed; expected a number from 30.0 to 600.0",
        ),
        (
            "[doors.front]\nheld_open = 60",
            "doors.front.held_open: unknown key; allowed keys: wiring, fallback, contact, "
            "has_contact, relock_on_close, held_open_s, unlock_s, rex_unlocks, rex_grace_s, gpio_line, "
            "gpio_active_low, nfc_reader, ble_proximity (did you mean 'held_open_s'?)",
        ),
    ],
)
def test_bad_boards_and_doors_are_named(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    assert str(info.value) == message


def test_full_valid_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        [gateway]
        state_dir = "/var/lib/luckey-gateway"
        log_level = "debug"
        log_format = "text"
        [web]
        host = "0.0.0.0"
        port = 443
        allow_remote = true
        [hardware]
        backend = "simulated"
        [events]
        max_rows = 1000
        batch_max = 10000
        [demo]
        seed = false
        """,
    )
    assert load_config(path) == Config(
        gateway=GatewaySection(Path("/var/lib/luckey-gateway"), "debug", "text"),
        web=WebSection("0.0.0.0", 443, allow_remote=True),
        hardware=HardwareSection("simulated"),
        events=EventsSection(1000, 10000),
        cloud=cloud_files(path.parent),
        demo=DemoSection(seed=False),
        source=path,
    )


def test_relative_state_dir_resolves_against_the_config_file_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(write(tmp_path / "elsewhere", "").parent)
    path = write(tmp_path / "etc" / "luckey", '[gateway]\nstate_dir = "../state/luckey"\n')
    assert load_config(path).gateway.state_dir == tmp_path / "etc" / "luckey" / "../state/luckey"
    path = write(tmp_path / "etc", '[gateway]\nstate_dir = "./var"\n')
    assert load_config(path).gateway.state_dir == tmp_path / "etc" / "var"


def test_parse_config_resolves_against_base_dir_or_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = {"gateway": {"state_dir": "state"}}
    assert parse_config(data, base_dir=tmp_path).gateway.state_dir == tmp_path / "state"
    monkeypatch.chdir(tmp_path)
    assert parse_config(data).gateway.state_dir == tmp_path / "state"


def test_unknown_key_suggests_the_closest(tmp_path: Path) -> None:
    error = single_error(tmp_path, "[web]\nprot = 8080\n")
    assert error.key_path == "web.prot"
    assert error.value == 8080
    assert str(error) == f"web.prot: unknown key; {WEB_KEYS} (did you mean 'port'?)"


def test_unknown_key_without_a_close_match(tmp_path: Path) -> None:
    error = single_error(tmp_path, "[events]\nzzz = 1\n")
    assert error.key_path == "events.zzz"
    assert str(error) == "events.zzz: unknown key; allowed keys: max_rows, batch_max"


def test_unknown_section(tmp_path: Path) -> None:
    error = single_error(tmp_path, "[webb]\nport = 8080\n")
    assert error.key_path == "webb"
    assert str(error) == f"webb: unknown section; {SECTIONS} (did you mean 'web'?)"


def test_key_above_its_section_header_suggests_the_section(tmp_path: Path) -> None:
    error = single_error(tmp_path, "port = 8080\n[web]\n")
    assert error.key_path == "port"
    assert str(error) == f"port: unknown section; {SECTIONS} (did you mean 'web.port'?)"


@pytest.mark.parametrize(
    ("text", "key_path", "allowed"),
    [
        ("[web]\nport = true", "web.port", "an integer from 1 to 65535"),
        ('[web]\nport = "8080"', "web.port", "an integer from 1 to 65535"),
        ("[web]\nport = 8080.0", "web.port", "an integer from 1 to 65535"),
        ("[web]\nallow_remote = 1", "web.allow_remote", "true or false"),
        ('[web]\nallow_remote = "yes"', "web.allow_remote", "true or false"),
        ("[web]\nhost = 127", "web.host", "an IP address"),
        ("[gateway]\nstate_dir = 5", "gateway.state_dir", "a non-empty path"),
        ("[gateway]\nlog_level = 1", "gateway.log_level", '"debug", "info", "warning", "error"'),
        ("[events]\nmax_rows = false", "events.max_rows", "an integer from 1000 to 10000000"),
        ("[demo]\nseed = [true]", "demo.seed", "true or false"),
        ("[demo]\nseed = {on = true}", "demo.seed", "true or false"),
    ],
)
def test_wrong_type(tmp_path: Path, text: str, key_path: str, allowed: str) -> None:
    error = single_error(tmp_path, text)
    assert error.key_path == key_path
    assert str(error).startswith(f"{key_path}: ")
    assert "is not allowed; expected" in str(error)
    assert allowed in error.allowed
    assert allowed in str(error)


def test_bool_for_int_message(tmp_path: Path) -> None:
    error = single_error(tmp_path, "[web]\nport = true\n")
    assert error.value is True
    assert str(error) == "web.port: true is not allowed; expected an integer from 1 to 65535"


@pytest.mark.parametrize("text", ["web = 5", 'web = "0.0.0.0"', "[[web]]\nport = 1"])
def test_section_that_is_not_a_table(tmp_path: Path, text: str) -> None:
    error = single_error(tmp_path, text)
    assert error.key_path == "web"
    assert "expected a table [web] with keys host, port, allow_remote" in str(error)


@pytest.mark.parametrize(
    ("section", "key", "value", "allowed"),
    [
        ("web", "port", 0, "an integer from 1 to 65535"),
        ("web", "port", 70000, "an integer from 1 to 65535"),
        ("web", "port", -1, "an integer from 1 to 65535"),
        ("events", "max_rows", 999, "an integer from 1000 to 10000000"),
        ("events", "max_rows", 10_000_001, "an integer from 1000 to 10000000"),
        ("events", "batch_max", 0, "an integer from 1 to 10000"),
        ("events", "batch_max", 10_001, "an integer from 1 to 10000"),
    ],
)
def test_out_of_range(tmp_path: Path, section: str, key: str, value: int, allowed: str) -> None:
    error = single_error(tmp_path, f"[{section}]\n{key} = {value}\n")
    assert error.key_path == f"{section}.{key}"
    assert error.value == value
    assert error.allowed == allowed
    assert str(error) == f"{section}.{key}: {value} is not allowed; expected {allowed}"


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [("web", "port", 1), ("web", "port", 65535), ("events", "max_rows", 10_000_000)],
)
def test_range_bounds_are_inclusive(tmp_path: Path, section: str, key: str, value: int) -> None:
    config = config_to_dict(load_config(write(tmp_path, f"[{section}]\n{key} = {value}\n")))
    assert config[section][key] == value


@pytest.mark.parametrize(
    ("text", "key_path", "allowed"),
    [
        ('[gateway]\nlog_level = "verbose"', "gateway.log_level", LEVELS),
        ('[gateway]\nlog_level = "INFO"', "gateway.log_level", LEVELS),
        ('[gateway]\nlog_format = "xml"', "gateway.log_format", 'one of "json", "text"'),
        (
            '[hardware]\nbackend = "usb"',
            "hardware.backend",
            'one of "virtual", "board", "gpio", "simulated"',
        ),
        (
            '[doors.front]\nwiring = "maglock"',
            "doors.front.wiring",
            'one of "fail_secure", "fail_safe"',
        ),
        ('[doors.front]\nfallback = "open"', "doors.front.fallback", 'one of "locked", "unlocked"'),
    ],
)
def test_bad_choice(tmp_path: Path, text: str, key_path: str, allowed: str) -> None:
    error = single_error(tmp_path, text)
    assert error.key_path == key_path
    assert error.allowed == allowed
    assert str(error).endswith(f"is not allowed; expected {allowed}")


def test_non_loopback_host_needs_allow_remote(tmp_path: Path) -> None:
    error = single_error(tmp_path, '[web]\nhost = "0.0.0.0"\n')
    assert error.key_path == "web.host"
    assert error.value == "0.0.0.0"
    assert str(error).startswith('web.host: "0.0.0.0" is not allowed; expected a loopback')
    assert "web.allow_remote = true" in str(error)
    assert "127.0.0.1 or ::1" in error.allowed


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1"])
def test_loopback_hosts_need_no_allow_remote(tmp_path: Path, host: str) -> None:
    assert load_config(write(tmp_path, f'[web]\nhost = "{host}"\n')).web.host == host


@pytest.mark.parametrize("host", ["192.168.1.20", "::", "fe80::1"])
def test_allow_remote_permits_other_addresses(tmp_path: Path, host: str) -> None:
    path = write(tmp_path, f'[web]\nhost = "{host}"\nallow_remote = true\n')
    assert load_config(path).web.host == host


@pytest.mark.parametrize("host", ["localhost", "", "300.1.1.1", "gateway.local"])
def test_host_must_be_an_ip_address(tmp_path: Path, host: str) -> None:
    error = single_error(tmp_path, f'[web]\nhost = "{host}"\nallow_remote = true\n')
    assert error.key_path == "web.host"
    assert error.allowed == "an IP address such as 127.0.0.1"
    assert (
        str(error) == f'web.host: "{host}" is not allowed; expected an IP address such as 127.0.0.1'
    )


def test_empty_state_dir_is_rejected(tmp_path: Path) -> None:
    error = single_error(tmp_path, '[gateway]\nstate_dir = ""\n')
    assert error.key_path == "gateway.state_dir"
    assert "a non-empty path" in str(error)


def test_several_errors_are_all_reported(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        [gateway]
        log_level = "verbose"
        [web]
        prot = 8080
        port = true
        host = "0.0.0.0"
        [events]
        max_rows = 5
        [extra]
        """,
    )
    with pytest.raises(ConfigErrors) as info:
        load_config(path)
    errors = info.value.errors
    assert sorted(e.key_path for e in errors) == [
        "events.max_rows",
        "extra",
        "gateway.log_level",
        "web.port",
        "web.prot",
    ]
    lines = str(info.value).splitlines()
    assert lines == [str(e) for e in errors]
    assert f"extra: unknown section; {SECTIONS}" in lines
    assert f"web.prot: unknown key; {WEB_KEYS} (did you mean 'port'?)" in lines
    assert "web.port: true is not allowed; expected an integer from 1 to 65535" in lines
    assert 'gateway.log_level: "verbose" is not allowed; expected one of "debug",' in str(
        info.value
    )
    assert "events.max_rows: 5 is not allowed; expected an integer from 1000 to 10000000" in lines
    # The group is itself a ConfigError, carrying the first problem's details.
    assert info.value.key_path == errors[0].key_path


def test_cross_check_still_runs_beside_an_unknown_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigErrors) as info:
        load_config(write(tmp_path, '[web]\nhots = "x"\nhost = "10.0.0.1"\n'))
    assert [e.key_path for e in info.value.errors] == ["web.hots", "web.host"]
    assert "web.allow_remote = true" in str(info.value)


def test_toml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    error = single_error(tmp_path, '[web]\nhost = "127.0.0.1"\nport = \n')
    path = tmp_path / "gateway.toml"
    assert error.key_path == ""
    assert error.allowed == "valid TOML"
    assert str(error).startswith(f"{path}: invalid TOML: ")
    assert "line 3" in str(error)


def test_unreadable_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "missing.toml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.key_path == ""
    assert info.value.allowed == "a readable TOML file"
    assert str(info.value).startswith(f"{path}: cannot read configuration: ")


def test_non_utf8_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    path.write_bytes(b'[web]\nhost = "\xff"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.key_path == ""
    assert info.value.allowed == "UTF-8 text"
    assert str(info.value).startswith(f"{path}: not UTF-8 text")


def test_require_admin_2fa_is_a_boolean(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "[web]\nrequire_admin_2fa = true\n"))
    assert config.web.require_admin_2fa is True
    error = single_error(tmp_path, '[web]\nrequire_admin_2fa = "yes"\n')
    assert error.key_path == "web.require_admin_2fa"


def test_config_to_dict_is_json_ready_and_parses_back(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "[web]\nport = 9000\n[demo]\nseed = false\n"))
    plain = config_to_dict(config)
    assert plain["gateway"]["state_dir"] == str(tmp_path / "var")
    assert plain["web"] == {
        "host": "127.0.0.1",
        "port": 9000,
        "allow_remote": False,
        "public_port": 0,
        "public_host": "127.0.0.1",
        "trust_forwarded_for": False,
        "require_admin_2fa": False,
    }
    assert "source" not in plain
    assert json.loads(json.dumps(plain)) == plain
    assert parse_config(plain, source=config.source) == config


def test_config_is_frozen() -> None:
    config = load_config(None)
    with pytest.raises(AttributeError):
        config.web.port = 1  # type: ignore[misc]


@given(port=st.one_of(st.integers(1, 65535), st.integers(-(2**63), 2**63 - 1)))
def test_port_range_property(tmp_path_factory: pytest.TempPathFactory, port: int) -> None:
    path = write(tmp_path_factory.mktemp("port"), f"[web]\nport = {port}\n")
    if 1 <= port <= 65535:
        assert load_config(path).web.port == port
        return
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert not isinstance(info.value, ConfigErrors)
    assert info.value.key_path == "web.port"
    assert info.value.allowed == "an integer from 1 to 65535"
    assert (
        str(info.value) == f"web.port: {port} is not allowed; expected an integer from 1 to 65535"
    )


def test_docs_repeat_the_example_file_verbatim() -> None:
    docs = DOCS.read_text(encoding="utf-8")
    example = EXAMPLE.read_text(encoding="utf-8")
    block = docs.split("## Example", 1)[1].split("```toml\n", 1)[1].split("```", 1)[0]
    assert block == example


@pytest.mark.parametrize(
    ("text", "expected"),
    [("touch", -35), ("near", -45), ("far", -60), ("-52", -52), ("-100", -100), ("-20", -20)],
)
def test_ble_proximity_presets_and_custom_values(text: str, expected: int) -> None:
    assert proximity_threshold(text) == expected
    config = parse_config({"doors": {"front": {"ble_proximity": text}}})
    assert proximity_threshold(config.doors["front"].ble_proximity) == expected


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("ble_proximity", "closer"),
        ("ble_proximity", "-10"),
        ("ble_proximity", "-101"),
        ("nfc_reader", "bluetooth:hci0"),
        ("nfc_reader", "udp:10.0.0.5:54321"),  # a simulator elsewhere is no reader
    ],
)
def test_bad_reader_settings_are_named(key: str, value: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"doors": {"front": {key: value}}})
    assert info.value.key_path == f"doors.front.{key}"


@pytest.mark.parametrize(
    ("key", "value"),
    [("system_identifier", ""), ("system_identifier", "zz"), ("desfire_aid", "4C55")],
)
def test_bad_nfc_keying_is_named(key: str, value: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"nfc": {key: value}})
    assert info.value.key_path == f"nfc.{key}"


def test_an_integer_too_large_for_a_float_is_a_config_error_not_a_crash() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config({"doors": {"front": {"held_open_s": 10**400}}})
    assert "doors.front.held_open_s" in str(caught.value)
