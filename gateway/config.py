"""Configuration: one TOML file validated at start into frozen dataclasses, or a clear error."""

from __future__ import annotations

import dataclasses
import datetime
import difflib
import ipaddress
import json
import re
import tomllib
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import TYPE_CHECKING, Any, Literal, get_args, get_origin, get_type_hints

from gateway.proximity import ProximityError, proximity_threshold

if TYPE_CHECKING:
    from gateway.officernd.mapping import MappingSettings

LogLevel = Literal["debug", "info", "warning", "error"]
LogFormat = Literal["json", "text"]
# virtual: door boards simulated in-process behind a pty (the embedded default); board: real door
# boards on a serial or RS-485 bus; gpio: relays on the Pi's own header; simulated: relays and
# readers in memory, no serial line (for development).
HardwareBackend = Literal["virtual", "board", "gpio", "simulated"]
Wiring = Literal["fail_secure", "fail_safe"]
ContactType = Literal["normally_closed", "normally_open"]
Fallback = Literal["locked", "unlocked"]
#: Board addresses on a bus (firmware_protocol SPEC.md "Header"), and the doors one board drives.
BOARD_ADDRESSES = (1, 247)
DOORS_PER_BOARD = 16

# A section-level check returns (key, bad value, what is allowed) for each problem it finds.
SectionCheck = Callable[[Any], list[tuple[str, object, str]]]


class ConfigError(ValueError):
    """A configuration problem naming the key path, the bad value and what is allowed."""

    def __init__(
        self, key_path: str, value: object, allowed: str, message: str | None = None
    ) -> None:
        self.key_path = key_path
        self.value = value
        self.allowed = allowed
        if message is None:
            message = f"{key_path}: {show_value(value)} is not allowed; expected {allowed}"
        super().__init__(message)


class ConfigErrors(ConfigError):
    """Several configuration problems at once; ``str()`` shows one per line."""

    def __init__(self, errors: list[ConfigError]) -> None:
        self.errors = list(errors)
        first = self.errors[0]
        super().__init__(
            first.key_path, first.value, first.allowed, "\n".join(str(e) for e in self.errors)
        )


def show_value(value: object) -> str:
    """Render ``value`` the way it would be written in TOML, shortened for one error line."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, str):
        text = json.dumps(value, ensure_ascii=False)
    elif isinstance(value, Mapping):
        text = "a table"
    elif isinstance(value, datetime.date | datetime.time):
        text = value.isoformat()
    else:
        text = str(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _is_ip_address(value: str) -> bool:
    """True if ``value`` is an IPv4 or IPv6 address."""
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def _check_web_remote(web: WebSection) -> list[tuple[str, object, str]]:
    """Refuse a non-loopback listen address unless remote access was asked for explicitly."""
    if web.public_port and web.public_port == web.port:
        return [
            ("public_port", web.public_port, f"0 (none) or a port other than web.port ({web.port})")
        ]
    if web.allow_remote or ipaddress.ip_address(web.host).is_loopback:
        return []
    allowed = (
        "a loopback address (127.0.0.1 or ::1) unless web.allow_remote = true"
        " (then the web app is served over HTTPS and every admin route needs the admin's login)"
    )
    return [("host", web.host, allowed)]


@dataclass(frozen=True, slots=True)
class GatewaySection:
    """``[gateway]``: where state lives and how the daemon logs."""

    state_dir: Path = Path("var")
    log_level: LogLevel = "info"
    log_format: LogFormat = "json"


@dataclass(frozen=True, slots=True)
class WebSection:
    """``[web]``: the local status and admin web server."""

    host: str = field(
        default="127.0.0.1",
        metadata={"validator": _is_ip_address, "allowed": "an IP address such as 127.0.0.1"},
    )
    port: int = field(default=8080, metadata={"min": 1, "max": 65535})
    allow_remote: bool = False
    # A second listener serving only what outsiders may reach (OfficeRnD's webhooks, member
    # login), for a TLS reverse proxy or tunnel to publish; 0: none.
    public_port: int = field(default=0, metadata={"min": 0, "max": 65535})
    public_host: str = field(
        default="127.0.0.1",
        metadata={"validator": _is_ip_address, "allowed": "an IP address such as 127.0.0.1"},
    )
    # Take a member's address from the X-Forwarded-For the reverse proxy on this machine adds
    # (its last entry); only when the proxy sets it, or clients could choose their own.
    trust_forwarded_for: bool = False
    # The admin must sign in with a TOTP code as well as the password (the site's data may
    # require it too); without one set up, a session can only set it up.
    require_admin_2fa: bool = False


@dataclass(frozen=True, slots=True)
class BoardEntry:
    """``[[hardware.boards]]``: one door board's bus address and its doors, in wiring order.

    Door *d* of a board uses its relay *d*, reader *d* and inputs 3d (contact), 3d+1 (REX)
    and 3d+2 (tamper).
    """

    address: int = field(metadata={"min": BOARD_ADDRESSES[0], "max": BOARD_ADDRESSES[1]})
    doors: tuple[str, ...] = field(
        default=(),
        metadata={"min_items": 1, "max_items": DOORS_PER_BOARD, "allowed": "door ids"},
    )


def _check_hardware(hw: HardwareSection) -> list[tuple[str, object, str]]:
    """Cross-field rules: a bus and boards for real boards, unique addresses and doors."""
    problems: list[tuple[str, object, str]] = []
    if hw.backend == "board" and not hw.bus:
        problems.append(("bus", hw.bus, "the serial device or socket:// URL of the door bus"))
    if hw.backend == "board" and not hw.boards:
        problems.append(("boards", "[]", "at least one [[hardware.boards]] entry"))
    if hw.backend not in ("board", "virtual") and hw.boards:
        problems.append(("boards", "a table", f"no boards with backend {show_value(hw.backend)}"))
    if hw.backend == "virtual" and hw.bus:
        problems.append(("bus", hw.bus, '"" (the virtual boards make their own pty)'))
    if hw.supervision_timeout_ms < 3 * hw.heartbeat_interval_ms:
        problems.append(
            (
                "supervision_timeout_ms",
                hw.supervision_timeout_ms,
                f"at least 3 heartbeat intervals ({3 * hw.heartbeat_interval_ms})",
            )
        )
    addresses: set[int] = set()
    doors: set[str] = set()
    for i, board in enumerate(hw.boards):
        if board.address in addresses:
            problems.append((f"boards[{i}].address", board.address, "an address not used twice"))
        addresses.add(board.address)
        for door in board.doors:
            if door in doors:
                problems.append((f"boards[{i}].doors", door, "a door on one board only, once"))
            doors.add(door)
    return problems


@dataclass(frozen=True, slots=True)
class HardwareSection:
    """``[hardware]``: what drives the relays and readers, and the door bus."""

    backend: HardwareBackend = "virtual"
    bus: str = ""  # board: "/dev/ttyAMA0", "socket://host:port" (ser2net), "rfc2217://..."
    baudrate: int = field(default=115200, metadata={"min": 1200, "max": 4_000_000})
    rs485: bool = False  # the kernel toggles RTS around each frame (half-duplex transceivers)
    poll_interval_ms: float = field(default=5.0, metadata={"min": 1.0, "max": 1000.0})
    heartbeat_interval_ms: int = field(default=1000, metadata={"min": 100, "max": 10_000})
    supervision_timeout_ms: int = field(default=3000, metadata={"min": 300, "max": 65_535})
    gpio_chip: str = "/dev/gpiochip0"
    boards: tuple[BoardEntry, ...] = ()


def _is_proximity(text: str) -> bool:
    try:
        proximity_threshold(text)
    except ProximityError:
        return False
    return True


def _is_nfc_path(text: str) -> bool:
    kind, _, rest = text.partition(":")
    if kind == "udp":
        # nfcpy's UDP pseudo-device is a simulator: only one on this machine may be a reader.
        host = rest.rsplit(":", 1)[0] if rest.count(":") else rest
        return host in ("127.0.0.1", "localhost")
    return kind in ("usb", "tty")


def _is_hex_of(sizes: range) -> Callable[[str], bool]:
    def check(text: str) -> bool:
        try:
            return len(bytes.fromhex(text)) in sizes
        except ValueError:
            return False

    return check


@dataclass(frozen=True, slots=True)
class DoorEntry:
    """``[doors.<door id>]``: how one door is wired and timed on this site (installer's choice).

    The unlock time itself comes with the site data (the door's ``unlock_seconds``).
    """

    wiring: Wiring = "fail_secure"  # fail_secure: energised unlocks (strike); fail_safe: locks
    fallback: Fallback = "locked"  # what the board does with the lock when the gateway is silent
    contact: ContactType = "normally_closed"
    has_contact: bool = True
    relock_on_close: bool = True
    held_open_s: float = field(default=120.0, metadata={"min": 30.0, "max": 600.0})
    # The installer's unlock time for this door (its closer, its users); 0: the site data's.
    unlock_s: float = field(default=0.0, metadata={"min": 0.0, "max": 3600.0})
    rex_unlocks: bool = True
    rex_grace_s: float = field(default=10.0, metadata={"min": 0.0, "max": 120.0})
    gpio_line: str = ""  # gpio backend: the relay's line name on the chip
    gpio_active_low: bool = False
    # An NFC reader of the gateway's own at this door (nfcpy device path); "": none.
    nfc_reader: str = field(
        default="",
        metadata={
            "validator": lambda text: not text or _is_nfc_path(text),
            "allowed": 'an nfcpy device path such as "usb", "usb:072f:2200", "tty:AMA0:pn532" '
            'or "udp:127.0.0.1:54321" (a card simulator on this machine)',
        },
    )
    # Phones open this door over BLE when their smoothed signal reaches this proximity; "": no.
    ble_proximity: str = field(
        default="",
        metadata={
            "validator": lambda text: not text or _is_proximity(text),
            "allowed": '"touch", "near", "far", or a threshold in dBm from -100 to -20 '
            'such as "-52"',
        },
    )


@dataclass(frozen=True, slots=True)
class NfcSection:
    """``[nfc]``: how cards are keyed on this site (the keys themselves are files, 0600)."""

    # AN10922 diversification input: UID ‖ AID ‖ this system identifier (1 to 21 bytes, hex).
    system_identifier: str = field(
        default="4C55434B4559",  # "LUCKEY"
        metadata={
            "validator": _is_hex_of(range(1, 22)),
            "allowed": "1 to 21 bytes of hex",
        },
    )
    desfire_aid: str = field(
        default="4C5501",
        metadata={"validator": _is_hex_of(range(3, 4)), "allowed": "3 bytes of hex"},
    )


@dataclass(frozen=True, slots=True)
class BleSection:
    """``[ble]``: the Bluetooth adapter phones are read through."""

    adapter: str = "hci0"


@dataclass(frozen=True, slots=True)
class EventsSection:
    """``[events]``: bounds of the durable event outbox."""

    max_rows: int = field(default=200_000, metadata={"min": 1000, "max": 10_000_000})
    batch_max: int = field(default=256, metadata={"min": 1, "max": 10_000})


@dataclass(frozen=True, slots=True)
class JournalSection:
    """``[journal]``: retention of the local event history (journal.db, the CSV exports')."""

    retention_days: int = field(default=400, metadata={"min": 1, "max": 36_500})
    max_rows: int = field(default=2_000_000, metadata={"min": 1000, "max": 100_000_000})


@dataclass(frozen=True, slots=True)
class KeypadSection:
    """``[keypad]``: the wrong-PIN lockout of each keypad reader."""

    attempts: int = field(default=3, metadata={"min": 1, "max": 20})
    lockout_s: int = field(default=60, metadata={"min": 5, "max": 3600})


_GATEWAY_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


def _check_cloud(cloud: CloudSection) -> list[tuple[str, object, str]]:
    """A cloud link needs this gateway's id, a broker and an https snapshot endpoint."""
    if not cloud.enabled:
        return []
    problems: list[tuple[str, object, str]] = []
    if not _GATEWAY_ID.fullmatch(cloud.gateway_id):
        problems.append(
            ("gateway_id", cloud.gateway_id, "1 to 64 of A-Z a-z 0-9 _ - (the certificate's CN)")
        )
    if not cloud.mqtt_host:
        problems.append(("mqtt_host", cloud.mqtt_host, "the MQTT broker's host name or address"))
    if not cloud.api_url.startswith("https://"):
        problems.append(("api_url", cloud.api_url, "an https:// URL (the snapshot endpoint)"))
    return problems


@dataclass(frozen=True, slots=True)
class CloudSection:
    """``[cloud]``: the link to the cloud (docs/cloud-contract.md); off until provisioned."""

    enabled: bool = False
    gateway_id: str = ""
    mqtt_host: str = ""
    mqtt_port: int = field(default=8883, metadata={"min": 1, "max": 65535})
    api_url: str = ""
    ca_file: Path = Path("cloud/ca.pem")
    cert_file: Path = Path("cloud/gateway.pem")
    key_file: Path = Path("cloud/gateway.key")
    signing_key_file: Path = Path("cloud/cloud-signing.pub")
    keepalive_s: int = field(default=30, metadata={"min": 5, "max": 3600})
    session_expiry_s: int = field(default=604_800, metadata={"min": 60, "max": 2_592_000})
    snapshot_interval_s: int = field(default=3600, metadata={"min": 60, "max": 86_400})


#: OfficeRnD member statuses (OFFICERND.md, "Objects"); ``former`` can never grant access.
OFFICERND_MEMBER_STATUSES = (
    "active",
    "former",
    "pending",
    "contact",
    "not_approved",
    "drop-in",
    "lead",
)
#: Credential kinds a member custom property may list (a phone key needs an enrolled key).
OFFICERND_CARD_KINDS = ("nfc_uid", "ntag424", "desfire", "mech_key")
_RULE_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
# The site-data id rule (gateway.codec): doors and schedules are named by such ids.
_SITE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}")
_LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
PLAN_NAME_MAX = 256


def https_or_loopback(url: str) -> bool:
    """True for an https:// URL with a host, or an http:// one to 127.0.0.1, localhost or [::1]."""
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        return False
    if not host or parts.username is not None or parts.password is not None:
        return False
    # Plain http only where nothing leaves this machine: tests against a local fake.
    return parts.scheme == "https" or (parts.scheme == "http" and host in _LOOPBACK_HOSTS)


def _is_webhook_url(url: str) -> bool:
    if url == "":
        return True
    parts = urllib.parse.urlsplit(url)
    return https_or_loopback(url) and parts.path.endswith("/hooks/officernd") and not parts.query


def _is_portal_policy(text: str) -> bool:
    if text in ("active_members", "nobody"):
        return True
    return text.startswith("property:") and bool(text.removeprefix("property:").strip())


def _check_officernd(section: OfficeRnDSection) -> list[tuple[str, object, str]]:
    """Known member statuses and card kinds; rule names, plans, doors and schedules usable."""
    problems: list[tuple[str, object, str]] = []
    statuses = [s for s in OFFICERND_MEMBER_STATUSES if s != "former"]
    for i, status in enumerate(section.member_statuses_with_access):
        if status == "former":
            allowed = "a status other than former (a former member never has access)"
            problems.append((f"member_statuses_with_access[{i}]", status, allowed))
        elif status not in statuses:
            allowed = "one of " + ", ".join(show_value(s) for s in statuses)
            problems.append((f"member_statuses_with_access[{i}]", status, allowed))
    for i, kind in enumerate(section.card_kinds):
        if kind not in OFFICERND_CARD_KINDS:
            allowed = "one of " + ", ".join(show_value(k) for k in OFFICERND_CARD_KINDS)
            if kind == "ble_phone_key":
                allowed += " (a phone key needs an enrolled public key, never a property)"
            problems.append((f"card_kinds[{i}]", kind, allowed))
    for name, rule in section.rules.items():
        problems.extend(_check_rule(name, rule))
    return problems


def _check_rule(name: str, rule: OfficeRnDRuleEntry) -> list[tuple[str, object, str]]:
    """One ``[officernd.rules.<name>]``: its name, plans, doors and schedule."""
    path = f"rules.{name}"
    if not _RULE_NAME.fullmatch(name):
        return [(path, name, "a rule name of 1 to 64 of A-Z a-z 0-9 _ -")]
    problems: list[tuple[str, object, str]] = []
    for i, plan in enumerate(rule.plans):
        if not plan.strip() or len(plan) > PLAN_NAME_MAX:
            allowed = f"a plan name (1 to {PLAN_NAME_MAX} characters) or a 24-hex plan id"
            problems.append((f"{path}.plans[{i}]", plan, allowed))
    for i, door in enumerate(rule.doors):
        if not _SITE_ID.fullmatch(door):
            problems.append((f"{path}.doors[{i}]", door, "a door id of the site data"))
    if rule.schedule and not _SITE_ID.fullmatch(rule.schedule):
        allowed = 'a schedule id of the site data, or "" (at any time)'
        problems.append((f"{path}.schedule", rule.schedule, allowed))
    return problems


@dataclass(frozen=True, slots=True)
class OfficeRnDRuleEntry:
    """``[officernd.rules.<name>]``: members holding one of ``plans`` may open ``doors``."""

    plans: tuple[str, ...] = field(
        metadata={"min_items": 1, "allowed": "plan names or 24-hex plan ids"}
    )
    doors: tuple[str, ...] = field(metadata={"min_items": 1, "allowed": "door ids"})
    schedule: str = ""  # a schedule id of the site data; "": at any time
    # The credentials it covers (Luckey keeps rules per credential type); card and PIN rules
    # belong to one user each, so a plan's rule covers every kind, phones or keys.
    type: str = field(
        default="any",
        metadata={
            "validator": lambda text: text in ("any", "smartphone", "key"),
            "allowed": '"any", "smartphone" or "key" (card and PIN rules are one user\'s each)',
        },
    )


@dataclass(frozen=True, slots=True)
class OfficeRnDSection:
    """``[officernd]``: how OfficeRnD is followed and mapped (its activation is in the state dir)."""

    poll_interval_s: int = field(
        default=60,
        metadata={
            "min": 0,
            "max": 86_400,
            # Below 10 s a poll would spend the read budget for little: off, or at least 10.
            "validator": lambda seconds: seconds == 0 or seconds >= 10,
            "allowed": "0 (off) or 10 to 86400",
        },
    )
    reconcile_interval_s: int = field(default=3600, metadata={"min": 300, "max": 86_400})
    webhook_url: str = field(
        default="",
        metadata={
            "validator": _is_webhook_url,
            "allowed": "the public https:// URL ending in /hooks/officernd that OfficeRnD posts "
            'to (http:// only to 127.0.0.1, localhost or [::1]), or "" (polling only)',
        },
    )
    card_property: str = field(
        default="luckey_cards",
        metadata={
            "validator": lambda name: bool(name.strip()),
            "allowed": "the name of a member custom property",
        },
    )
    portal_access: str = field(
        default="property:member_app",
        metadata={
            "validator": _is_portal_policy,
            "allowed": '"property:<name>" (a member custom property), "active_members" or "nobody"',
        },
    )
    member_statuses_with_access: tuple[str, ...] = field(
        default=("active", "drop-in"), metadata={"allowed": "OfficeRnD member statuses"}
    )
    card_kinds: tuple[str, ...] = field(
        default=("nfc_uid", "ntag424", "desfire"), metadata={"allowed": "credential kinds"}
    )
    login: bool = True  # members sign in with their OfficeRnD email and password
    session_minutes: int = field(default=60, metadata={"min": 5, "max": 1440})
    rules: Mapping[str, OfficeRnDRuleEntry] = field(default_factory=dict)

    def mapping_settings(self) -> MappingSettings:
        """These settings as the mapping takes them."""
        # Imported here: loading a configuration must not import the connector (and aiohttp).
        from gateway.model import CredentialKind  # noqa: PLC0415
        from gateway.officernd.mapping import MappingSettings  # noqa: PLC0415

        return MappingSettings(
            card_property=self.card_property,
            portal_access=self.portal_access,
            member_statuses_with_access=frozenset(self.member_statuses_with_access),
            card_kinds=frozenset(CredentialKind(kind) for kind in self.card_kinds),
        )


@dataclass(frozen=True, slots=True)
class DemoSection:
    """``[demo]``: the demo site for a first run."""

    seed: bool = True


@dataclass(frozen=True, slots=True)
class Config:
    """The whole validated configuration; ``source`` is the file it came from, if any."""

    gateway: GatewaySection = field(default_factory=GatewaySection)
    web: WebSection = field(default_factory=WebSection, metadata={"check": _check_web_remote})
    hardware: HardwareSection = field(
        default_factory=HardwareSection, metadata={"check": _check_hardware}
    )
    doors: Mapping[str, DoorEntry] = field(default_factory=dict)
    events: EventsSection = field(default_factory=EventsSection)
    journal: JournalSection = field(default_factory=JournalSection)
    keypad: KeypadSection = field(default_factory=KeypadSection)
    nfc: NfcSection = field(default_factory=NfcSection)
    ble: BleSection = field(default_factory=BleSection)
    cloud: CloudSection = field(default_factory=CloudSection, metadata={"check": _check_cloud})
    officernd: OfficeRnDSection = field(
        default_factory=OfficeRnDSection, metadata={"check": _check_officernd}
    )
    demo: DemoSection = field(default_factory=DemoSection)
    source: Path | None = field(default=None, metadata={"internal": True})


# --- the generic loader: walks dataclass fields, their type hints and their metadata ---


def _describe_list(hint: Any, meta: Mapping[str, Any], key_path: str) -> str:
    """Say in words which arrays a ``tuple[X, ...]`` field with constraints ``meta`` accepts."""
    item = get_args(hint)[0]
    low, high = meta.get("min_items", 0), meta.get("max_items")
    if _is_section(item):
        noun = f"an array of tables [[{key_path}]]"
    else:
        noun = f"a list of {meta.get('allowed') or _describe(item, {})}"
    if high is not None:
        return f"{noun} ({low} to {high} items)"
    return f"{noun} (at least {low})" if low else noun


def _describe(hint: Any, meta: Mapping[str, Any]) -> str:
    """Say in words which values a field with type ``hint`` and constraints ``meta`` accepts."""
    if "allowed" in meta:
        return str(meta["allowed"])
    if get_origin(hint) is Literal:
        choices = [show_value(c) for c in get_args(hint)]
        return choices[0] if len(choices) == 1 else "one of " + ", ".join(choices)
    noun = {
        bool: "true or false",
        int: "an integer",
        float: "a number",
        str: "a string",
        Path: "a non-empty path (relative to the config file's directory)",
    }[hint]
    low, high = meta.get("min"), meta.get("max")
    if low is not None and high is not None:
        return f"{noun} from {low} to {high}"
    if low is not None:
        return f"{noun} of at least {low}"
    if high is not None:
        return f"{noun} of at most {high}"
    return noun


def _convert(raw: Any, hint: Any, meta: Mapping[str, Any], key_path: str, base: Path) -> Any:
    """Return ``raw`` as a ``hint`` within ``meta``'s constraints; ConfigError otherwise."""
    error = ConfigError(key_path, raw, _describe(hint, meta))
    value: Any = raw
    if get_origin(hint) is Literal:
        ok = any(type(raw) is type(c) and raw == c for c in get_args(hint))
    elif hint is bool or hint is str:
        ok = isinstance(raw, hint)
    elif hint is int:
        ok = isinstance(raw, int) and not isinstance(raw, bool)
    elif hint is float:
        ok = isinstance(raw, int | float) and not isinstance(raw, bool)
        try:
            value = float(raw) if ok else raw
        except OverflowError:  # an integer too large for a float
            ok, value = False, raw
    elif hint is Path:
        ok = isinstance(raw, str | PurePath) and str(raw) != ""
        value = base / raw if ok else raw
    else:
        raise TypeError(f"{key_path}: unsupported configuration type {hint!r}")
    if not ok:
        raise error
    low, high = meta.get("min"), meta.get("max")
    # Written as "not >=" so that NaN fails every bound.
    if (low is not None and not value >= low) or (high is not None and not value <= high):
        raise error
    validator = meta.get("validator")
    if validator is not None and not validator(value):
        raise error
    return value


def _unknown(
    key: str, value: object, names: list[str], nested: list[str], path: str
) -> ConfigError:
    """The error for a key or section the schema lacks, suggesting the closest known name."""
    kind = "key" if path else "section"
    key_path = f"{path}.{key}" if path else key
    allowed = f"allowed {kind}s: {', '.join(names)}"
    # The nested names catch a key written above its [section] header ("port" -> "web.port").
    close = difflib.get_close_matches(key, names, n=1)
    close = close or difflib.get_close_matches(key, nested, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ConfigError(key_path, value, allowed, f"{key_path}: unknown {kind}; {allowed}{hint}")


def _is_section(hint: Any) -> bool:
    """True if a field of type ``hint`` is a table of its own (a nested dataclass)."""
    return isinstance(hint, type) and dataclasses.is_dataclass(hint)


def _is_list(hint: Any) -> bool:
    """True for ``tuple[X, ...]``: a TOML array (of tables when X is a dataclass)."""
    return get_origin(hint) is tuple


def _is_table_map(hint: Any) -> bool:
    """True for ``Mapping[str, X]`` with X a dataclass: a table of named tables."""
    return get_origin(hint) in (Mapping, dict) and _is_section(get_args(hint)[1])


def _default(f: dataclasses.Field[Any]) -> Any:
    """The field's default (from its factory if it has one), or MISSING."""
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def _load_list(
    raw: Any,
    hint: Any,
    meta: Mapping[str, Any],
    key_path: str,
    base: Path,
    errors: list[ConfigError],
) -> tuple[Any, ...] | None:
    """A TOML array as a tuple of ``hint``'s item type; None (errors added) if unusable."""
    item = get_args(hint)[0]
    low, high = meta.get("min_items", 0), meta.get("max_items")
    if (
        not isinstance(raw, list | tuple)
        or len(raw) < low
        or (high is not None and len(raw) > high)
    ):
        errors.append(ConfigError(key_path, raw, _describe_list(hint, meta, key_path)))
        return None
    items: list[Any] = []
    failed = False
    for i, element in enumerate(raw):
        path = f"{key_path}[{i}]"
        if _is_section(item):
            if not isinstance(element, Mapping):
                errors.append(ConfigError(path, element, f"a table with keys of [[{key_path}]]"))
                failed = True
                continue
            loaded = _load(item, element, path, base, errors)
            failed = failed or loaded is None
            items.append(loaded)
            continue
        try:
            items.append(_convert(element, item, {}, path, base))
        except ConfigError as err:
            errors.append(err)
            failed = True
    return None if failed else tuple(items)


def _load_table_map(
    raw: Any, hint: Any, key_path: str, base: Path, errors: list[ConfigError]
) -> dict[str, Any] | None:
    """A table of named tables (``[doors.front]``) as a dict; None (errors added) if unusable."""
    item = get_args(hint)[1]
    if not isinstance(raw, Mapping):
        errors.append(ConfigError(key_path, raw, f"tables such as [{key_path}.NAME]"))
        return None
    loaded: dict[str, Any] = {}
    failed = False
    for name, table in raw.items():
        path = f"{key_path}.{name}"
        if not isinstance(table, Mapping):
            keys = ", ".join(g.name for g in dataclasses.fields(item))
            errors.append(ConfigError(path, table, f"a table [{path}] with keys {keys}"))
            failed = True
            continue
        value = _load(item, table, path, base, errors)
        failed = failed or value is None
        loaded[str(name)] = value
    return None if failed else loaded


def _load(
    cls: type[Any], table: Mapping[str, Any], path: str, base: Path, errors: list[ConfigError]
) -> Any:
    """Build dataclass ``cls`` from ``table``, adding problems to ``errors``; None if unusable."""
    hints = get_type_hints(cls)
    fields = [f for f in dataclasses.fields(cls) if not f.metadata.get("internal")]
    names = [f.name for f in fields]
    nested = [
        f"{f.name}.{g.name}"
        for f in fields
        if _is_section(hints[f.name])
        for g in dataclasses.fields(hints[f.name])
    ]
    errors.extend(
        _unknown(str(k), v, names, nested, path) for k, v in table.items() if k not in names
    )
    values: dict[str, Any] = {}
    failed = False
    for f in fields:
        key_path = f"{path}.{f.name}" if path else f.name
        hint = hints[f.name]
        if _is_section(hint):
            raw = table.get(f.name, {})
            if not isinstance(raw, Mapping):
                keys = ", ".join(g.name for g in dataclasses.fields(hint))
                errors.append(ConfigError(key_path, raw, f"a table [{key_path}] with keys {keys}"))
                failed = True
                continue
            section = _load(hint, raw, key_path, base, errors)
            check: SectionCheck | None = f.metadata.get("check")
            if section is not None and check is not None:
                problems = check(section)
                errors.extend(ConfigError(f"{key_path}.{k}", v, a) for k, v, a in problems)
            values[f.name] = section
            failed = failed or section is None
            continue
        default = _default(f)
        if f.name not in table and default is dataclasses.MISSING:
            if _is_list(hint):
                expected = _describe_list(hint, f.metadata, key_path)
            else:
                expected = _describe(hint, f.metadata)
            errors.append(
                ConfigError(key_path, None, expected, f"{key_path}: missing; expected {expected}")
            )
            failed = True
            continue
        raw = table.get(f.name, default)
        if _is_list(hint):
            value: Any = _load_list(raw, hint, f.metadata, key_path, base, errors)
        elif _is_table_map(hint):
            value = _load_table_map(raw, hint, key_path, base, errors)
        else:
            # Defaults go through the same conversion, so a default path is resolved too.
            try:
                value = _convert(raw, hint, f.metadata, key_path, base)
            except ConfigError as err:
                errors.append(err)
                value = None
        if value is None:
            failed = True
        values[f.name] = value
    return None if failed else cls(**values)


def _check_doors(config: Config) -> list[ConfigError]:
    """``[doors]`` tables must name doors this gateway drives: a typo would invert a lock."""
    hw = config.hardware
    on_boards = {door for board in hw.boards for door in board.doors}
    errors = []
    for door_id, entry in config.doors.items():
        path = f"doors.{door_id}"
        if hw.boards and door_id not in on_boards:
            errors.append(
                ConfigError(
                    path,
                    "a table",
                    f"a door listed in [[hardware.boards]] ({', '.join(sorted(on_boards))})",
                    f"{path}: no board drives this door; list it in [[hardware.boards]] "
                    f"(doors there: {', '.join(sorted(on_boards))})",
                )
            )
        if hw.backend == "gpio" and not entry.gpio_line:
            errors.append(
                ConfigError(
                    f"{path}.gpio_line",
                    "",
                    'the relay\'s line name (with backend "gpio" every [doors] table needs one)',
                )
            )
        unusual = entry.wiring == "fail_safe" or entry.fallback == "unlocked"
        if hw.backend == "virtual" and not hw.boards and unusual:
            errors.append(
                ConfigError(
                    path,
                    "a table",
                    "a door listed in [[hardware.boards]]",
                    f"{path}: a fail_safe lock or an unlocked fallback needs the door listed in "
                    "[[hardware.boards]], so its board is told its fallback level at start",
                )
            )
    errors.extend(_check_ble_doors(config))
    return errors


def _check_ble_doors(config: Config) -> list[ConfigError]:
    """One BLE door per adapter: a phone's signal tells how near the radio it is, not which door.

    The virtual backend gives each door its own simulated radio, so any number may have one.
    """
    ble_doors = sorted(d for d, e in config.doors.items() if e.ble_proximity)
    if config.hardware.backend == "virtual" or len(ble_doors) < 2:
        return []
    return [
        ConfigError(
            f"doors.{ble_doors[1]}.ble_proximity",
            config.doors[ble_doors[1]].ble_proximity,
            f'"" (only one door per Bluetooth adapter; {ble_doors[0]} already has it)',
            f"doors.{ble_doors[1]}.ble_proximity: the Bluetooth adapter {config.ble.adapter} "
            f"already serves door {ble_doors[0]!r}; an adapter hears how near a phone is to it, "
            "not which door the phone is at, so it serves one door",
        )
    ]


def parse_config(
    data: Mapping[str, Any], *, source: Path | None = None, base_dir: Path | None = None
) -> Config:
    """Validate parsed TOML ``data`` into a Config; raise ConfigError (ConfigErrors if several)."""
    if base_dir is None:
        base_dir = source.parent if source is not None else Path.cwd()
    errors: list[ConfigError] = []
    config = _load(Config, data, "", base_dir.absolute(), errors)
    if isinstance(config, Config):
        errors.extend(_check_doors(config))
    if len(errors) == 1:
        raise errors[0]
    if errors:
        raise ConfigErrors(errors)
    assert isinstance(config, Config)
    return dataclasses.replace(config, source=source)


def load_config(path: Path | None) -> Config:
    """Read and validate the TOML file at ``path`` (defaults if None); errors name the file."""
    if path is None:
        return parse_config({})
    source = path.absolute()
    try:
        with source.open("rb") as file:
            data = tomllib.load(file)
    except OSError as err:
        reason = err.strerror or str(err)
        raise ConfigError(
            "", str(path), "a readable TOML file", f"{path}: cannot read configuration: {reason}"
        ) from err
    except tomllib.TOMLDecodeError as err:
        raise ConfigError("", str(path), "valid TOML", f"{path}: invalid TOML: {err}") from err
    except UnicodeDecodeError as err:
        raise ConfigError(
            "", str(path), "UTF-8 text", f"{path}: not UTF-8 text: {err.reason}"
        ) from err
    return parse_config(data, source=source)


def _plain(value: object) -> Any:
    """``value`` with dataclasses as dicts (internal fields left out) and paths as strings."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            f.name: _plain(getattr(value, f.name))
            for f in dataclasses.fields(value)
            if not f.metadata.get("internal")
        }
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


def config_to_dict(config: Config) -> dict[str, Any]:
    """The sections as plain TOML values (paths as strings, no ``source``); parses back equal."""
    return dict(_plain(config))
