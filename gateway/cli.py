"""The ``luckey-gateway`` command line."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import os
import signal
import sqlite3
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime, tzinfo
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from drivers.gpio_relays import GpioError
from firmware_protocol.frame import MAX_ADDRESS, MIN_ADDRESS
from firmware_protocol.messages import MAX_RELAYS
from gateway import __version__, access, credentials, ntag424
from gateway.cache import read_view
from gateway.config import Config, ConfigError, NfcSection, config_to_dict, load_config
from gateway.door_modes import DoorModeStore
from gateway.doors import desired_mode
from gateway.explain import decision_to_json, explain
from gateway.files import UnsafeFile, read_regular_file
from gateway.logs import setup_logging
from gateway.nfc_cards import MAX_SYSTEM_IDENTIFIER, NTAG424_AID, NfcKeys
from gateway.operator_views import (
    DoorAccess,
    Holder,
    can_open,
    can_open_to_json,
    local_text,
    who_can,
    who_can_to_json,
)
from gateway.pins import parse_typed_credential
from gateway.signing import KeyFileError
from gateway.sqlite import DatabaseError
from gateway.view import CacheView
from gateway.web import WebServerError, user_summary

if TYPE_CHECKING:
    from gateway.officernd.activation import Activation

EXIT_OK = 0
EXIT_DENIED = 1
EXIT_USAGE = 2
#: ``tags verify-sun --file-master`` diversifies with the configuration's default unless told.
DEFAULT_SYSTEM_IDENTIFIER = NfcSection().system_identifier


class CliError(Exception):
    """A problem the user can fix; printed without a traceback, exit status 2."""


def _config(args: argparse.Namespace) -> Config:
    try:
        return load_config(args.config)
    except ConfigError as err:
        raise CliError(f"configuration error:\n{err}") from None


def _view(config: Config) -> tuple[CacheView, Path]:
    path = config.gateway.state_dir / "cache.db"
    if not path.exists():
        raise CliError(
            f"no cache at {path}: start the gateway once (`luckey-gateway run`) so it syncs or seeds"
        )
    try:
        return read_view(path), path
    except (sqlite3.Error, ValueError) as err:
        raise CliError(f"cannot read the cache at {path}: {err}") from None


def cmd_run(args: argparse.Namespace) -> int:
    """Run the daemon until SIGTERM/SIGINT."""
    from gateway.app import run  # noqa: PLC0415 - only `run` needs aiohttp; other commands start faster

    config = _config(args)
    setup_logging(config.gateway.log_level, config.gateway.log_format)
    try:
        config = _daemon_config(config)
        # A restart asked for by the web app (saved settings, a claim) reads everything again.
        asyncio.run(run(config, reload=lambda: _daemon_config(_config(args))))
    except (WebServerError, DatabaseError, GpioError, KeyFileError, OSError) as err:
        raise CliError(f"cannot start: {err}") from None
    return EXIT_OK


def _daemon_config(config: Config) -> Config:
    """The file's configuration with the claimed identity and the web app's settings over it."""
    from gateway.local_settings import with_local_settings  # noqa: PLC0415
    from gateway.provisioning import IdentityError, with_identity  # noqa: PLC0415

    try:
        # A claimed identity turns the cloud link on (unless the file configures its own).
        return with_local_settings(with_identity(config))
    except (IdentityError, ConfigError) as err:
        raise CliError(f"cannot use the saved settings or cloud identity: {err}") from None


def cmd_check_config(args: argparse.Namespace) -> int:
    """Validate a config file and print what it resolves to."""
    config = _config(args)
    if args.json:
        print(
            json.dumps(
                {
                    "ok": True,
                    "source": str(config.source) if config.source else None,
                    **config_to_dict(config),
                },
                indent=2,
            )
        )
    else:
        print(f"ok: {config.source or 'defaults (no file)'}")
        for section, values in config_to_dict(config).items():
            for key, value in values.items():
                print(f"  {section}.{key} = {value}")
    return EXIT_OK


def cmd_decide(args: argparse.Namespace) -> int:
    """Explain what the gateway would decide for a credential at a door."""
    config = _config(args)
    view, path = _view(config)
    try:
        kind, value = parse_typed_credential(args.credential, view.site.pin_hashing)
        at = datetime.now(UTC) if args.at is None else datetime.fromisoformat(args.at)
    except ValueError as err:
        raise CliError(str(err)) from None
    if at.tzinfo is None:
        raise CliError(f"--at {args.at!r} needs a UTC offset, e.g. 2026-12-01T09:00:00+01:00")
    if args.door not in view.doors:
        known = ", ".join(sorted(view.doors)) or "none"
        raise CliError(f"unknown door {args.door!r}; doors in the cache: {known}")
    overrides = DoorModeStore(path.with_name("door_modes.json")).load(repair=False)
    credential = view.credential(kind, value)
    try:
        mode = desired_mode(view, args.door, overrides.get(args.door), at)
        decision = access.decide(credentials.assumed(credential, kind), args.door, at, view, mode)
        explanation = explain(decision, view, credential)
    except OverflowError:
        raise CliError(f"--at {args.at!r} is out of range") from None
    if args.json:
        print(
            json.dumps(
                {"decision": decision_to_json(decision), "explanation": explanation}, indent=2
            )
        )
    else:
        print(explanation)
        print("(a what-if: the credential is assumed to prove itself as strongly as it can)")
    return EXIT_OK if decision.granted else EXIT_DENIED


def cmd_users_list(args: argparse.Namespace) -> int:
    """List the cached users with their tags."""
    view, _ = _view(_config(args))
    users = [user_summary(view.users[i]) for i in sorted(view.users)]
    if args.json:
        print(json.dumps(users, indent=2))
    else:
        for u in users:
            print(f"{u['id']:<24} {u['status']:<10} {u['name']:<32} {','.join(u['tags'])}")
    return EXIT_OK


#: At most this many ids are listed when an id is unknown.
KNOWN_IDS_SHOWN = 10


def _some_ids(ids: Iterable[str]) -> str:
    """A few of ``ids``, sorted, for a message naming what exists ("none" when empty)."""
    known = sorted(ids)
    shown = ", ".join(known[:KNOWN_IDS_SHOWN]) or "none"
    more = len(known) - KNOWN_IDS_SHOWN
    return f"{shown}, … ({len(known)} in all)" if more > 0 else shown


def _at_option(text: str | None) -> datetime:
    """``--at`` as an aware instant (default: now)."""
    try:
        at = datetime.now(UTC) if text is None else datetime.fromisoformat(text)
    except ValueError as err:
        raise CliError(f"--at {text!r} is not an ISO 8601 instant: {err}") from None
    if at.tzinfo is None:
        raise CliError(f"--at {text!r} needs a UTC offset, e.g. 2026-12-01T09:00:00+01:00")
    return at


def _holder_line(holder: Holder, *, with_user: bool = True) -> str:
    user = f"{holder.user_id:<16} {holder.user_name or '?':<24} " if with_user else ""
    credential = f"{holder.credential.id:<20} {holder.credential.kind.value:<14}"
    if holder.granted:
        rule = f" (rule {holder.rule_id})" if holder.rule_id else ""
        return f"  {user}{credential} {holder.reason.value}{rule}"
    return f"  {user}{credential} {holder.reason.value}\n      {holder.explanation}"


def cmd_who_can(args: argparse.Namespace) -> int:
    """List who can open a door at an instant (and, asked, who is denied and why)."""
    config = _config(args)
    at = _at_option(args.at)
    view, path = _view(config)
    if args.door not in view.doors:
        raise CliError(f"unknown door {args.door!r}; doors in the cache: {_some_ids(view.doors)}")
    overrides = DoorModeStore(path.with_name("door_modes.json")).load(repair=False)
    try:
        mode = desired_mode(view, args.door, overrides.get(args.door), at)
        holders = who_can(view, args.door, at, mode=mode, include_denied=args.denied)
        when = local_text(at, view)
    except OverflowError:
        raise CliError(f"--at {args.at!r} is out of range") from None
    if args.json:
        body = who_can_to_json(view, args.door, at, mode, holders, denied=args.denied)
        print(json.dumps(body, indent=2))
        return EXIT_OK
    door = view.doors[args.door]
    granted = [h for h in holders if h.granted]
    users = len({h.user_id for h in granted})
    print(
        f'Who can open "{door.name}" ({door.id}) at {when}, mode {mode.value}: '
        f"{len(granted)} credential(s) of {users} user(s)"
    )
    for holder in granted:
        print(_holder_line(holder))
    if args.denied:
        near = [h for h in holders if not h.granted]
        print(f"Denied ({len(near)}):" if near else "Denied: none")
        for holder in near:
            print(_holder_line(holder))
    print("(a what-if: each credential is assumed to prove itself as strongly as it can)")
    return EXIT_OK


def _door_lines(item: DoorAccess) -> list[str]:
    door = item.door
    verdict = "opens" if item.granted else "does not open"
    lines = [f'{door.id} "{door.name}" (mode {item.mode.value}): {verdict}']
    lines += [_holder_line(h, with_user=False) for h in item.holders]
    for rule in item.rules:
        via = [f"tag {tag}" for tag in rule.via_tags] + (["named"] if rule.names_user else [])
        lines.append(f'  rule {rule.rule.id} "{rule.rule.name}" ({", ".join(via)}): {rule.when}')
    if not item.rules:
        lines.append("  no rule gives this door to the user")
    return lines


def cmd_can_open(args: argparse.Namespace) -> int:
    """List what a user can open at an instant, door by door, and when their rules apply."""
    config = _config(args)
    at = _at_option(args.at)
    view, path = _view(config)
    user = view.user(args.user)
    if user is None:
        raise CliError(f"unknown user {args.user!r}; users in the cache: {_some_ids(view.users)}")
    overrides = DoorModeStore(path.with_name("door_modes.json")).load(repair=False)
    try:
        doors = can_open(
            view,
            args.user,
            at,
            mode=lambda door: desired_mode(view, door, overrides.get(door), at),
        )
        when = local_text(at, view)
    except OverflowError:
        raise CliError(f"--at {args.at!r} is out of range") from None
    if args.json:
        print(json.dumps(can_open_to_json(view, args.user, at, doors), indent=2))
        return EXIT_OK
    opened = sum(d.granted for d in doors)
    print(
        f'What "{user.name}" ({user.id}, {user.status.value}) can open at {when}: '
        f"{opened} of {len(doors)} door(s)"
    )
    if doors and not doors[0].holders:
        print("  (the user holds no credential)")
    for item in doors:
        for line in _door_lines(item):
            print(line)
    print("(a what-if: each credential is assumed to prove itself as strongly as it can)")
    return EXIT_OK


def _error_text(err: urllib.error.HTTPError) -> str:
    """The gateway's JSON error message, or the HTTP status when the body is not ours."""
    try:
        message = json.load(err).get("error")
    except (ValueError, AttributeError):
        message = None
    return str(message) if message else f"the gateway answered {err.code} {err.reason}"


def cmd_present(args: argparse.Namespace) -> int:
    """Hold a credential to a running gateway's simulated reader."""
    config = _config(args)
    host = "127.0.0.1" if config.web.host in ("0.0.0.0", "::") else config.web.host  # noqa: S104
    url = f"http://{host}:{config.web.port}/api/simulator/doors/{urllib.parse.quote(args.door, safe='')}/present"
    request = urllib.request.Request(
        url,
        data=json.dumps({"credential": args.credential}).encode(),
        headers={"content-type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310
            body = json.load(response)
    except urllib.error.HTTPError as err:
        raise CliError(_error_text(err)) from None
    except (OSError, ValueError) as err:
        raise CliError(
            f"no gateway answering at {url} ({err}); is `luckey-gateway run` running?"
        ) from None
    print(json.dumps(body, indent=2) if args.json else body["explanation"])
    return EXIT_OK if body["decision"]["granted"] else EXIT_DENIED


def cmd_status(args: argparse.Namespace) -> int:
    """The running gateway at a glance; exit 0 healthy, 1 degraded, 2 not answering."""
    config = _config(args)
    health, doors = (_daemon_json(config, path) for path in ("/api/health", "/api/doors"))
    problems = _degraded(health)
    if args.json:
        print(json.dumps({"health": health, "doors": doors, "problems": problems}, indent=2))
    else:
        _print_status(health, doors, problems)
    return EXIT_DENIED if problems else EXIT_OK


def _daemon_json(config: Config, path: str) -> Any:
    """A JSON answer of the running gateway (CliError if none answers)."""
    body = _daemon_get(config, path, timeout_s=5)
    try:
        return json.loads(body)
    except ValueError as err:
        raise CliError(f"{path}: the gateway's answer is not JSON ({err})") from None


def _daemon_get(config: Config, path: str, *, timeout_s: float) -> bytes:
    """The body of a GET to the running gateway (CliError if none answers)."""
    url = _daemon_url(config, path)
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:  # noqa: S310 - local
            body: bytes = response.read()
            return body
    except urllib.error.HTTPError as err:
        raise CliError(f"{url}: {_error_text(err)}") from None
    except OSError as err:
        raise CliError(f"no gateway answering at {url} ({err}); is it running?") from None


def _degraded(health: dict[str, Any]) -> list[str]:
    """What needs attention: a cloud link down, a board offline, OfficeRnD failing, a reset."""
    problems = []
    cloud = health.get("cloud", {})
    if cloud.get("enabled") and not cloud.get("online"):
        problems.append(f"cloud link down for {_duration(cloud.get('offline_s', 0))}")
    for board in health.get("boards", []):
        if not board.get("online"):
            problems.append(f"board {board.get('address')} offline ({board.get('reason', '?')})")
    if health.get("officernd", {}).get("state") == "error":
        problems.append("OfficeRnD sync failing (luckey-gateway officernd status)")
    if cloud.get("enabled") and health.get("cache", {}).get("needs_resync"):
        problems.append("the cache waits for a full snapshot from the cloud")
    return problems


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def _print_status(health: dict[str, Any], doors: list[dict[str, Any]], problems: list[str]) -> None:
    cache = health.get("cache", {})
    counts = ", ".join(f"{n} {k}" for k, n in cache.get("counts", {}).items())
    print(f"site: {health.get('site')} (cache version {cache.get('version')}: {counts})")
    outbox = health.get("outbox", {})
    dropped = sum(outbox.get("dropped", {}).values())
    print(f"outbox: {outbox.get('rows')} events waiting, {dropped} ever dropped")
    cloud = health.get("cloud", {})
    if not cloud.get("enabled"):
        print("cloud: not configured")
    else:
        down = f"DOWN for {_duration(cloud.get('offline_s', 0))}"
        print(f"cloud: {'online' if cloud.get('online') else down}")
    officernd = health.get("officernd", {})
    activated = officernd.get("activated")
    print(f"officernd: {officernd.get('state') if activated else 'not activated'}")
    for board in health.get("boards", []):
        state = "online" if board.get("online") else f"OFFLINE ({board.get('reason', '?')})"
        print(f"board {board.get('address')}: {state} since {board.get('since')}")
    for door in doors:
        lock = {True: "unlocked", False: "locked", None: "lock ?"}[door.get("unlocked")]
        position = {True: "open", False: "closed", None: "position ?"}[door.get("open")]
        alarms = ", ".join(door.get("alarms", [])) or "no alarm"
        print(f"door {door['id']}: {door['mode']}, {lock}, {position}, {alarms}")
    for problem in problems:
        print(f"ATTENTION: {problem}")


def cmd_diagnostics(args: argparse.Namespace) -> int:
    """Save the running gateway's diagnostics bundle (secrets left out) for support."""
    config = _config(args)
    body = _daemon_get(config, "/api/diagnostics", timeout_s=30)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = args.output or Path(f"luckey-diagnostics-{stamp}.zip")
    # It names members and doors: readable by its owner only.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(body)
    print(f"saved {path} ({len(body)} bytes; no keys or secrets in it)")
    return EXIT_OK


def cmd_events_export(args: argparse.Namespace) -> int:
    """Write the journal's events of a time range as CSV (read-only: the daemon may be running)."""
    from gateway.journal import ExportError, JournalError, export_csv  # noqa: PLC0415

    config = _config(args)
    tz, user_name = _site_for_export(config, args.timezone)
    types = [part for value in args.type or () for part in value.split(",")]
    try:
        chunks = export_csv(
            config.gateway.state_dir / "journal.db",
            args.start,
            args.end,
            types=types,
            door=args.door,
            tz=tz,
            user_name=user_name,
        )
    except ExportError as err:
        raise CliError(f"--{err.parameter}: {err}") from None

    async def write(out: BinaryIO) -> None:
        async with contextlib.aclosing(chunks):
            async for chunk in chunks:
                out.write(chunk.encode())

    try:
        if args.output is None:
            asyncio.run(write(sys.stdout.buffer))
            sys.stdout.flush()
            return EXIT_OK
        # It names members and their credentials: readable by its owner only.
        fd = os.open(args.output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        try:
            with os.fdopen(fd, "wb") as out:
                asyncio.run(write(out))
        except BaseException:
            args.output.unlink(missing_ok=True)  # a partial file would look like a whole one
            raise
    except JournalError as err:
        raise CliError(str(err)) from None
    except BrokenPipeError:
        # The reader went away (`| head`): not an error; keep Python from reporting it at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except OSError as err:
        raise CliError(f"cannot write {args.output}: {err.strerror or err}") from None
    print(f"saved {args.output}", file=sys.stderr)
    return EXIT_OK


def _site_for_export(
    config: Config, timezone: str | None
) -> tuple[tzinfo, Callable[[str], str | None] | None]:
    """The export's timezone (``--timezone``, else the site's) and user names, from the cache."""
    view: CacheView | None = None
    path = config.gateway.state_dir / "cache.db"
    if path.exists():
        try:
            view = read_view(path)
        except (sqlite3.Error, ValueError) as err:
            print(f"luckey-gateway: no user names or site timezone: {err}", file=sys.stderr)
    tz: tzinfo = UTC
    if timezone is not None:
        try:
            tz = ZoneInfo(timezone)
        except (ValueError, ZoneInfoNotFoundError):
            raise CliError(
                f"--timezone {timezone!r} is not an IANA timezone such as Europe/Rome"
            ) from None
    elif view is not None:
        tz = view.tz
    if view is None:
        return tz, None
    users = view.users

    def user_name(user_id: str) -> str | None:
        user = users.get(user_id)
        return None if user is None else user.name

    return tz, user_name


def cmd_sim_board(args: argparse.Namespace) -> int:
    """Run a virtual door board until SIGTERM/SIGINT, announcing where to connect."""
    from drivers.sim_board import SimBoardError, parse_port, run_sim_board  # noqa: PLC0415
    from drivers.virtual_board import BoardConfig  # noqa: PLC0415

    try:
        parse_port(args.port)
    except SimBoardError as err:
        raise CliError(str(err)) from None
    if not MIN_ADDRESS <= args.address <= MAX_ADDRESS:
        raise CliError(
            f"--address {args.address} is not allowed; use {MIN_ADDRESS} to {MAX_ADDRESS}"
        )
    if not 1 <= args.doors <= MAX_RELAYS:
        raise CliError(f"--doors {args.doors} is not allowed; use 1 to {MAX_RELAYS}")
    config = BoardConfig(address=args.address, doors=args.doors, physics=args.physics)

    def announce(url: str) -> None:
        print(f"virtual board {args.address} ready: connect the gateway to {url}", flush=True)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await run_sim_board(args.port, config, announce=announce, stop=stop)

    try:
        asyncio.run(main())
    except OSError as err:
        raise CliError(f"cannot start the virtual board on {args.port}: {err}") from None
    return EXIT_OK


def _key_argument(text: str, option: str) -> bytes:
    """A 16-byte AES key given as hex, or as ``@FILE`` holding the hex (kept out of ``ps``)."""
    if text.startswith("@"):
        try:
            text = Path(text[1:]).read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError) as err:
            raise CliError(f"{option}: cannot read the key file {text[1:]}: {err}") from None
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) != ntag424.KEY_BYTES:
        raise CliError(
            f"{option} must be a 16-byte AES key: 32 hex digits, or @FILE holding them"
        )  # the value itself is a secret: never echoed
    return key


def _hex_argument(text: str, option: str, sizes: range) -> bytes:
    """A non-secret hex value of ``sizes`` bytes (as in the configuration's ``[nfc]``)."""
    try:
        value = bytes.fromhex(text)
    except ValueError:
        value = b""
    if len(value) not in sizes:
        count = str(sizes.start) if len(sizes) == 1 else f"{sizes.start} to {sizes.stop - 1}"
        raise CliError(f"{option} must be {count} bytes of hex")
    return value


def _file_key_for(args: argparse.Namespace, meta_key: bytes) -> Callable[[bytes], bytes]:
    """KSDMFileRead of a tag by its UID: ``--file-key`` as given, or derived from the master."""
    if args.file_key is not None:
        if args.system_identifier is not None or args.aid is not None:
            raise CliError("--system-identifier and --aid apply to --file-master only")
        file_key = _key_argument(args.file_key, "--file-key")
        return lambda uid: file_key
    master = _key_argument(args.file_master, "--file-master")
    system_identifier = _hex_argument(
        DEFAULT_SYSTEM_IDENTIFIER if args.system_identifier is None else args.system_identifier,
        "--system-identifier",
        range(1, MAX_SYSTEM_IDENTIFIER + 1),
    )
    aid = _hex_argument(
        NTAG424_AID.hex() if args.aid is None else args.aid,
        "--aid",
        range(ntag424.AID_BYTES, ntag424.AID_BYTES + 1),
    )
    # The gateway's own derivation: NfcKeys.sun_file_key, for the UID the PICC data holds.
    keys = NfcKeys(
        ntag424_master=None,
        sun_meta_key=meta_key,
        sun_file_master=master,
        desfire_master=None,
        desfire_aid=aid,  # not used here: no DESFire key is derived
        system_identifier=system_identifier,
        ntag424_aid=aid,
    )

    def derived(uid: bytes) -> bytes:
        key = keys.sun_file_key(uid)
        if key is None:  # cannot happen: sun_file_master is set
            raise CliError("no SUN file master key")
        return key

    return derived


def cmd_tags_verify_sun(args: argparse.Namespace) -> int:
    """Check one SUN message (a tag's URL) with the given keys; exit 0 valid, 1 not valid."""
    try:
        message = ntag424.parse_sun_url(args.url)
    except ValueError as err:
        raise CliError(f"not a SUN message: {err}") from None
    meta_key = _key_argument(args.meta_key, "--meta-key")
    file_key_for = _file_key_for(args, meta_key)
    result = ntag424.verify_sun(message, meta_key, file_key_for)
    decrypted = bool(result.uid)
    if result.valid:
        why = "the MAC verifies"
    elif decrypted and args.file_key is not None:
        why = "the MAC does not verify with this file key (or the URL was altered)"
    elif decrypted:
        why = (
            "the MAC does not verify with the file key derived from this master (wrong master, "
            "system identifier or AID, or the URL was altered)"
        )
    else:
        why = "the meta-read key does not decrypt the PICC data (wrong key, or not a SUN message)"
    file_data = result.file_data
    if args.json:
        print(
            json.dumps(
                {
                    "valid": result.valid,
                    "uid": result.uid.hex().upper() if decrypted else None,
                    "read_counter": result.read_counter if decrypted else None,
                    "file_data": None if file_data is None else file_data.hex().upper(),
                    "reason": why,
                }
            )
        )
    else:
        print(f"valid: {'yes' if result.valid else 'no'} ({why})")
        if decrypted:
            note = "" if result.valid else " (not authenticated)"
            print(f"uid: {result.uid.hex().upper()}{note}")
            print(f"read counter: {result.read_counter}{note}")
        if file_data is not None:
            shown = file_data.decode("ascii") if file_data.isascii() else ""
            printable = shown.isprintable() and shown
            print(f"file data: {file_data.hex().upper()}" + (f" ({shown!r})" if printable else ""))
    return EXIT_OK if result.valid else EXIT_DENIED


# --- officernd ----------------------------------------------------------------------------------

#: How long the CLI waits for a running daemon to answer a reload or a status request.
DAEMON_TIMEOUT_S = 1.0
#: How long it waits for the daemon's full sync (a large organisation takes seconds).
SYNC_TIMEOUT_S = 300.0
#: The most of a client secret file read (a secret is at most 1000 characters).
SECRET_FILE_MAX_BYTES = 4096


def _daemon_url(config: Config, path: str) -> str:
    """The URL of ``path`` on this configuration's local web server."""
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(config.web.host, config.web.host)  # noqa: S104
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{config.web.port}{path}"


def _loopback_web(config: Config) -> bool:
    """Whether the web server listens on loopback (only then are the settings routes served)."""
    return ipaddress.ip_address(config.web.host).is_loopback


def _notify_reload(config: Config) -> None:
    """Ask a running daemon to reload its OfficeRnD activation, and say what came of it."""
    url = _daemon_url(config, "/api/officernd/reload")
    # The URL is always http:// to the configured local web server.
    request = urllib.request.Request(  # noqa: S310
        url, data=b"{}", headers={"content-type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=DAEMON_TIMEOUT_S):  # noqa: S310
            pass
    except urllib.error.HTTPError as err:
        if err.code == 404 and not _loopback_web(config):
            print(
                "the gateway's settings routes are served only on a loopback web server "
                f"(web.host is {config.web.host}): restart the gateway to use this"
            )
        elif err.code == 404:
            print(
                "the running gateway predates this command and cannot reload OfficeRnD: "
                "restart it to use this"
            )
        else:
            print(
                f"the running gateway could not reload OfficeRnD ({_error_text(err)}): restart it"
            )
        return
    except urllib.error.URLError as err:
        if isinstance(err.reason, ConnectionRefusedError):
            print("the gateway is not running: it will use this when it starts")
        else:
            print(f"no answer from a gateway at {url} ({err.reason}): restart it if it is running")
        return
    except OSError as err:  # a timeout while reading the answer
        print(f"no answer from a gateway at {url} ({err}): restart it if it is running")
        return
    print("the running gateway reloaded its OfficeRnD activation")


def _daemon_status(config: Config) -> dict[str, object] | None:
    """The running daemon's OfficeRnD status, or None if no daemon answers with one."""
    url = _daemon_url(config, "/api/officernd/status")
    try:
        with urllib.request.urlopen(url, timeout=DAEMON_TIMEOUT_S) as response:  # noqa: S310
            body = json.load(response)
    except (OSError, ValueError):
        return None
    return body if isinstance(body, dict) else None


def _read_client_secret(path: Path) -> str:
    """The secret in ``path`` without one trailing newline; never echoed, even in errors."""
    try:
        data = read_regular_file(path, SECRET_FILE_MAX_BYTES)
    except UnsafeFile as err:
        raise CliError(f"the client secret file: {err}") from None
    if data is None:
        raise CliError(f"cannot read the client secret file {path}: it does not exist")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise CliError(f"{path} is not UTF-8 text") from None
    secret = text.removesuffix("\n").removesuffix("\r")
    if not secret:
        raise CliError(f"{path} is empty: put the client secret in it")
    return secret


def cmd_officernd_activate(args: argparse.Namespace) -> int:
    """Check OfficeRnD credentials, store them, and tell a running gateway."""
    from gateway.officernd import activation as act  # noqa: PLC0415 - aiohttp only when needed
    from gateway.officernd.client import OfficeRnDError  # noqa: PLC0415

    config = _config(args)
    secret = _read_client_secret(args.client_secret_file)
    hosts = {}
    if args.api_base is not None:
        hosts["api_base"] = args.api_base
    if args.identity_url is not None:
        hosts["identity_url"] = args.identity_url
    scopes = act.scopes_for(config.officernd)
    try:
        activation, report = asyncio.run(
            act.activate(
                config.gateway.state_dir,
                args.org,
                args.client_id,
                secret,
                scopes=scopes,
                **hosts,
            )
        )
    except OfficeRnDError as err:
        raise CliError(act.describe_failure(err, org=args.org)) from None
    except OSError as err:
        where = act.folder(config.gateway.state_dir)
        raise CliError(f"cannot store the activation in {where}: {err}") from None
    if report.members_visible:
        members = "yes"
    else:
        members = "none seen (the organisation has no member yet, or the app may not see them)"
    rate = "not told" if report.read_rate_remaining is None else str(report.read_rate_remaining)
    print(f"activated: OfficeRnD organisation {activation.org}")
    print(f"  client id: {activation.client_id}")
    print(f"  api base: {activation.api_base}")
    print(f"  scopes granted: {', '.join(report.scopes) or 'none listed'}")
    print(f"  members visible: {members}")
    print(f"  read requests left this minute: {rate}")
    print(f"  stored in: {act.folder(config.gateway.state_dir)} (client secret 0600)")
    _notify_reload(config)
    return EXIT_OK


def cmd_officernd_sync(args: argparse.Namespace) -> int:
    """A full OfficeRnD sync: by the running gateway, or here when none runs."""
    config = _config(args)
    summary = _sync_through_daemon(config)
    if summary is None:
        summary = _sync_here(config)
    if args.json:
        print(json.dumps(summary, indent=2))
        return EXIT_OK
    print(
        f"synced {summary['members']} members, {summary['companies']} companies, "
        f"{summary['memberships']} memberships, {summary['plans']} plans"
    )
    print(
        f"  → {summary['users']} users, {summary['tags']} plan tags, {summary['cards']} cards, "
        f"{summary['rules']} plan rules"
    )
    print(f"  {summary['changed']} changes, {summary['requests']} requests, {summary['seconds']} s")
    problems = summary.get("problem_list", [])
    if problems:
        print(f"  {summary['problems']} problems in OfficeRnD's data, e.g.:")
        for problem in problems[:20]:
            print(f"    - {problem}")
    return EXIT_OK


def _sync_through_daemon(config: Config) -> dict[str, Any] | None:
    """The summary of a full sync run by the running gateway; None if none is running."""
    url = _daemon_url(config, "/api/officernd/sync")
    request = urllib.request.Request(  # noqa: S310 - http:// to the local web server
        url, data=b"{}", headers={"content-type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=SYNC_TIMEOUT_S) as response:  # noqa: S310
            body = json.load(response)
    except urllib.error.HTTPError as err:
        if err.code == 404 and not _loopback_web(config):
            raise CliError(
                "the gateway's settings routes are served only on a loopback web server "
                f"(web.host is {config.web.host}): stop the gateway to sync from here"
            ) from None
        if err.code == 404:
            raise CliError("the running gateway cannot sync OfficeRnD: restart it") from None
        raise CliError(f"the running gateway's sync failed: {_error_text(err)}") from None
    except urllib.error.URLError as err:
        if isinstance(err.reason, ConnectionRefusedError):
            return None
        raise CliError(f"no answer from a gateway at {url} ({err.reason})") from None
    if not isinstance(body, dict):
        raise CliError(f"the gateway at {url} answered something else than a summary")
    return body


def _sync_here(config: Config) -> dict[str, Any]:
    """Run a full sync in this process against the state directory (no gateway is running)."""
    from gateway.officernd.activation import describe_failure  # noqa: PLC0415
    from gateway.officernd.client import OfficeRnDError  # noqa: PLC0415
    from gateway.officernd.sync import RefusedByCache  # noqa: PLC0415

    activation = _stored_activation(config)
    if activation is None:
        raise CliError(
            "OfficeRnD is not activated: run `luckey-gateway officernd activate --org SLUG "
            "--client-id ID --client-secret-file PATH` first"
        )
    try:
        return asyncio.run(_full_sync(config, activation))
    except OfficeRnDError as err:
        raise CliError(f"the sync failed: {describe_failure(err)}") from None
    except RefusedByCache as err:
        raise CliError(f"the sync was refused: {err}") from None
    except DatabaseError as err:
        raise CliError(f"cannot open the cache: {err}") from None


async def _full_sync(config: Config, activation: Activation) -> dict[str, Any]:
    """One full sync into the cache file, recorded in the outbox like the daemon's."""
    import aiohttp  # noqa: PLC0415

    from gateway.cache import Cache  # noqa: PLC0415
    from gateway.events import EventLog  # noqa: PLC0415
    from gateway.officernd.activation import scopes_for  # noqa: PLC0415
    from gateway.officernd.client import OfficeRnDClient  # noqa: PLC0415
    from gateway.officernd.service import sync_options  # noqa: PLC0415
    from gateway.officernd.sync import OfficeRnDSync  # noqa: PLC0415
    from gateway.outbox import Outbox  # noqa: PLC0415

    state_dir = config.gateway.state_dir
    cache = Cache(state_dir / "cache.db")
    outbox = Outbox(state_dir / "outbox.db", max_rows=config.events.max_rows)
    await cache.start()
    try:
        await outbox.start()
        try:
            async with aiohttp.ClientSession() as session:
                client = OfficeRnDClient(activation.settings(scopes_for(config.officernd)), session)
                sync = OfficeRnDSync(
                    client,
                    cache,
                    EventLog(outbox),
                    sync_options(config.officernd),
                    state_dir=state_dir / "officernd",
                )
                summary = await sync.full_sync()
        finally:
            await outbox.stop()
    finally:
        await cache.stop()
    return summary.to_json() | {"problem_list": list(summary.problems[:50])}


def _stored_activation(config: Config) -> Activation | None:
    """The stored OfficeRnD activation or None; CliError if it is damaged or unsafe."""
    from gateway.officernd import activation as act  # noqa: PLC0415

    try:
        return act.load_activation(config.gateway.state_dir)
    except act.ActivationError as err:
        raise CliError(str(err)) from None


def cmd_officernd_status(args: argparse.Namespace) -> int:
    """Show the stored OfficeRnD activation (never its secrets) and the daemon's live status."""
    config = _config(args)
    activation = _stored_activation(config)
    daemon = _daemon_status(config)
    stored: dict[str, object] = {"activated": activation is not None}
    if activation is not None:
        stored |= {
            "org": activation.org,
            "client_id": activation.client_id,
            "api_base": activation.api_base,
            "identity_url": activation.identity_url,
            "activated_at": activation.activated_at.isoformat(),
            "webhook_id": activation.webhook_id,
            "client_secret": "stored (0600)",
            "webhook_secret": None if activation.webhook_secret is None else "stored (0600)",
        }
    if args.json:
        print(json.dumps({**stored, "daemon": daemon}, indent=2))
        return EXIT_OK
    if activation is None:
        print(
            "OfficeRnD is not activated: run `luckey-gateway officernd activate --org SLUG "
            "--client-id ID --client-secret-file PATH`"
        )
    else:
        for key, value in stored.items():
            if key != "activated":
                print(f"{key.replace('_', ' ')}: {'none' if value is None else value}")
    if daemon is None:
        print("gateway: not running (or not answering)")
    else:
        print("gateway:")
        for key, value in daemon.items():
            shown = value if isinstance(value, str) else json.dumps(value)
            print(f"  {key}: {shown}")
    return EXIT_OK


def _confirmed(question: str) -> bool:
    """True if the operator answers yes at the terminal; CliError without a terminal."""
    if not sys.stdin.isatty():
        raise CliError("not deactivating without confirmation: stdin is not a terminal; add --yes")
    try:
        answer = input(f"{question} [y/N] ")
    except EOFError:
        return False
    return answer.strip().lower() in ("y", "yes")


def cmd_officernd_deactivate(args: argparse.Namespace) -> int:
    """Remove the OfficeRnD activation (after confirmation) and tell a running gateway."""
    from gateway.officernd import activation as act  # noqa: PLC0415

    config = _config(args)
    state_dir = config.gateway.state_dir
    try:
        activation = act.load_activation(state_dir)
    except act.ActivationError as err:
        activation = None
        what = "the damaged OfficeRnD activation"
        print(f"note: {err}")  # deactivating is how a damaged activation is cleared
    else:
        if activation is None:
            print("OfficeRnD is not activated: nothing to remove")
            return EXIT_OK
        what = f"the OfficeRnD activation of organisation {activation.org}"
    if not args.yes and not _confirmed(f"Remove {what} from this gateway?"):
        print("nothing changed")
        return EXIT_DENIED
    try:
        removed = act.remove_activation(state_dir)
    except (act.ActivationError, OSError) as err:
        raise CliError(f"cannot remove the activation: {err}") from None
    if not removed:
        print("OfficeRnD is not activated: nothing to remove")
        return EXIT_OK
    print(f"removed {what} from {act.folder(state_dir)}")
    if activation is not None and activation.webhook_id is not None:
        print(
            f"the webhook {activation.webhook_id} stays registered in OfficeRnD: delete it "
            "there if it is no longer wanted"
        )
    _notify_reload(config)
    return EXIT_OK


# --- provisioning ------------------------------------------------------------------------------


def cmd_provision(args: argparse.Namespace) -> int:
    """Claim this gateway in the cloud with a one-time code, or show whether it is claimed."""
    from gateway import provisioning as prov  # noqa: PLC0415 - aiohttp only when needed

    config = _config(args)
    state_dir = config.gateway.state_dir
    if args.status:
        if args.cloud is not None or args.claim_code is not None or args.replace:
            raise CliError("--status takes no --cloud, --claim-code or --replace")
        return _provision_status(state_dir, as_json=args.json)
    if args.cloud is None or args.claim_code is None:
        raise CliError("provision needs --cloud URL and --claim-code CODE (or --status)")
    try:
        identity = prov.claim_sync(args.cloud, args.claim_code, state_dir, replace=args.replace)
    except (prov.InvalidClaimInput, prov.AlreadyClaimed, prov.IdentityError) as err:
        raise CliError(str(err)) from None
    except prov.ClaimError as err:
        print(f"luckey-gateway: the claim failed: {err}", file=sys.stderr)
        return EXIT_DENIED
    except OSError as err:
        raise CliError(f"cannot store the identity in {prov.cloud_dir(state_dir)}: {err}") from None
    if args.json:
        print(json.dumps(identity.to_json(), indent=2))
    else:
        print(f"claimed: gateway id {identity.gateway_id}")
        print(f"  device fingerprint: {identity.device_fingerprint}")
        print(f"  broker: {identity.mqtt_host}:{identity.mqtt_port}")
        print(f"  api url: {identity.api_url}")
        print(f"  stored in: {prov.cloud_dir(state_dir)} (files 0600)")
    if config.cloud.enabled:
        print(
            "note: the configuration sets [cloud] enabled = true itself; it wins over the "
            "claimed identity until that [cloud] section is removed"
        )
    print("restart the service to start syncing: systemctl restart luckey-gateway")
    return EXIT_OK


def _provision_status(state_dir: Path, *, as_json: bool) -> int:
    """Print whether the gateway is claimed, as which id, and its device fingerprint."""
    from gateway import provisioning as prov  # noqa: PLC0415

    try:
        state = prov.provisioning_state(state_dir)
    except prov.IdentityError as err:
        raise CliError(str(err)) from None
    if as_json:
        print(json.dumps(state.to_json(), indent=2))
        return EXIT_OK
    key = state.fingerprint or "none yet (made at the first claim)"
    if state.identity is None:
        print("unclaimed: claim it with `luckey-gateway provision --cloud URL --claim-code CODE`")
    else:
        print(f"claimed: gateway id {state.identity.gateway_id}")
        print(f"  cloud: {state.identity.cloud_url}")
        print(f"  claimed at: {state.identity.claimed_at.isoformat()}")
        print(f"  broker: {state.identity.mqtt_host}:{state.identity.mqtt_port}")
        print(f"  api url: {state.identity.api_url}")
    print(f"  device fingerprint: {key}")
    return EXIT_OK


def _daemon_answers(config: Config) -> bool:
    """Whether a gateway answers on this configuration's local web server."""
    try:
        with urllib.request.urlopen(  # noqa: S310 - http:// to the local web server
            _daemon_url(config, "/api/health"), timeout=DAEMON_TIMEOUT_S
        ):
            return True
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False


def cmd_factory_reset(args: argparse.Namespace) -> int:
    """Remove the cloud identity, the device key and the local cache and outbox (confirmed)."""
    from gateway import provisioning as prov  # noqa: PLC0415

    if args.config is None:
        raise CliError("factory-reset needs --config PATH: the configuration naming the state dir")
    config = _config(args)
    state_dir = config.gateway.state_dir
    try:
        state = prov.provisioning_state(state_dir)
        expected = "unclaimed" if state.identity is None else state.identity.gateway_id
    except prov.IdentityError as err:
        print(f"note: {err}")  # a reset is how a damaged identity is cleared
        expected = "unclaimed"
    if args.confirm != expected:
        raise CliError(
            f"not resetting: --confirm must be exactly {expected!r} "
            f"({'the gateway id' if expected != 'unclaimed' else 'this gateway is unclaimed'})"
        )
    if _daemon_answers(config):
        raise CliError(
            "the gateway is running: stop it first (systemctl stop luckey-gateway), then reset"
        )
    try:
        removed = prov.factory_reset(state_dir)
    except (prov.IdentityError, OSError) as err:
        raise CliError(f"cannot reset {state_dir}: {err}") from None
    print(f"factory reset of {state_dir}: removed {len(removed)} files")
    for path in removed:
        print(f"  {path}")
    print("kept: site keys, the OfficeRnD activation and anything else in the state directory")
    return EXIT_OK


def _add_provisioning_parsers(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    """``luckey-gateway provision`` and ``luckey-gateway factory-reset``."""
    provision = sub.add_parser(
        "provision",
        parents=[common],
        help="claim this gateway in the cloud (exit 0 claimed, 1 refused by the cloud, 2 bad input)",
        description="Claim this gateway with a one-time claim code from the cloud console: the "
        "gateway makes its own key (it never leaves the device), the cloud certifies it and "
        "assigns the gateway id; the identity is stored in the state directory. Restart the "
        "service afterwards to start syncing.",
    )
    provision.add_argument("--cloud", metavar="URL", help="the cloud's https:// URL")
    provision.add_argument(
        "--claim-code", metavar="CODE", help="the one-time claim code from the cloud console"
    )
    provision.add_argument(
        "--replace", action="store_true", help="claim again even if already claimed"
    )
    provision.add_argument(
        "--status", action="store_true", help="show whether the gateway is claimed, and as what"
    )
    provision.add_argument("--json", action="store_true")
    provision.set_defaults(func=cmd_provision)

    reset = sub.add_parser(
        "factory-reset",
        parents=[common],
        help="remove the cloud identity, the device key, the cache and the outbox",
        description="Remove the cloud identity, the device key and the local cache, outbox and "
        "door modes from the state directory (site keys and the OfficeRnD activation stay). "
        "The gateway must be stopped.",
    )
    reset.add_argument(
        "--confirm",
        required=True,
        metavar="GATEWAY_ID",
        help="the gateway id exactly (see `provision --status`), or 'unclaimed'",
    )
    reset.set_defaults(func=cmd_factory_reset)


def _add_officernd_parsers(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    """``luckey-gateway officernd ...``: activate, status, deactivate (one subparser each)."""
    officernd = sub.add_parser("officernd", help="the OfficeRnD integration").add_subparsers(
        dest="officernd_command", required=True
    )
    activate = officernd.add_parser(
        "activate",
        parents=[common],
        help="check OfficeRnD credentials and store them (exit 0 activated, 2 refused)",
        description="Check the organisation and the API application's Client ID and Secret "
        "against OfficeRnD with a real request; only if they work, store them in the state "
        "directory (the secret mode 0600) and tell a running gateway to use them.",
    )
    activate.add_argument(
        "--org",
        required=True,
        metavar="SLUG",
        help="the administration portal name (OfficeRnD → Settings → General, or the admin "
        "URL …/admin/<name>)",
    )
    activate.add_argument(
        "--client-id",
        required=True,
        metavar="ID",
        help="the application's Client ID (Settings → Data & Extensibility → Developer Tools)",
    )
    activate.add_argument(
        "--client-secret-file",
        required=True,
        type=Path,
        metavar="PATH",
        help="a file holding the Client Secret (kept off the command line); it may be removed "
        "afterwards: the gateway keeps its own copy",
    )
    activate.add_argument(
        "--api-base", metavar="URL", help="the Flex API v2 base (default: OfficeRnD's global one)"
    )
    activate.add_argument(
        "--identity-url",
        metavar="URL",
        help="the token endpoint (default: OfficeRnD's global one)",
    )
    activate.set_defaults(func=cmd_officernd_activate)

    status = officernd.add_parser(
        "status",
        parents=[common],
        help="show the stored activation (never its secrets) and the running gateway's status",
    )
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=cmd_officernd_status)

    deactivate = officernd.add_parser(
        "deactivate", parents=[common], help="remove the stored OfficeRnD activation"
    )
    deactivate.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    deactivate.set_defaults(func=cmd_officernd_deactivate)

    sync = officernd.add_parser(
        "sync",
        parents=[common],
        help="run a full sync now and print a summary (through the running gateway, if any)",
    )
    sync.add_argument("--once", action="store_true", required=True, help="one full sync, then exit")
    sync.add_argument("--json", action="store_true")
    sync.set_defaults(func=cmd_officernd_sync)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every subcommand."""
    parser = argparse.ArgumentParser(
        prog="luckey-gateway", description="Luckey edge gateway for access control."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config", type=Path, help="TOML configuration file (default: built-in defaults)"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("run", parents=[common], help="run the gateway daemon").set_defaults(
        func=cmd_run
    )

    check = sub.add_parser("check-config", parents=[common], help="validate a configuration file")
    check.add_argument("--json", action="store_true")
    check.set_defaults(func=cmd_check_config)

    decide = sub.add_parser(
        "decide",
        parents=[common],
        help="explain the decision for a credential at a door (exit 0 granted, 1 denied)",
    )
    decide.add_argument("--door", required=True)
    decide.add_argument("--credential", required=True, metavar="KIND:VALUE")
    decide.add_argument(
        "--at", metavar="ISO-8601", help="instant to decide at, with UTC offset (default: now)"
    )
    decide.add_argument("--json", action="store_true")
    decide.set_defaults(func=cmd_decide)

    users = sub.add_parser("users", help="cached users").add_subparsers(
        dest="users_command", required=True
    )
    users_list = users.add_parser("list", parents=[common], help="list cached users and their tags")
    users_list.add_argument("--json", action="store_true")
    users_list.set_defaults(func=cmd_users_list)

    who = sub.add_parser(
        "who-can",
        parents=[common],
        help="list every credential that opens a door at an instant (decided as `decide` does)",
    )
    who.add_argument("--door", required=True)
    who.add_argument(
        "--at", metavar="ISO-8601", help="instant to ask about, with UTC offset (default: now)"
    )
    who.add_argument(
        "--denied", action="store_true", help="also list the near misses, and why each is denied"
    )
    who.add_argument("--json", action="store_true")
    who.set_defaults(func=cmd_who_can)

    opens = sub.add_parser(
        "can-open",
        parents=[common],
        help="list what a user's credentials open at an instant, door by door, and their rules",
    )
    opens.add_argument("--user", required=True)
    opens.add_argument(
        "--at", metavar="ISO-8601", help="instant to ask about, with UTC offset (default: now)"
    )
    opens.add_argument("--json", action="store_true")
    opens.set_defaults(func=cmd_can_open)

    present = sub.add_parser(
        "present",
        parents=[common],
        help="present a credential at a running gateway's simulated reader",
    )
    present.add_argument("--door", required=True)
    present.add_argument("--credential", required=True, metavar="KIND:VALUE")
    present.add_argument("--json", action="store_true")
    present.set_defaults(func=cmd_present)

    tags = sub.add_parser("tags", help="NFC tags").add_subparsers(
        dest="tags_command", required=True
    )
    verify_sun = tags.add_parser(
        "verify-sun",
        help="verify an NTAG 424 DNA SUN message (exit 0 valid, 1 not valid, 2 bad input)",
        description="Verify the SUN message a tag wrote into its URL: decrypt the PICC data "
        "with the meta-read key, check the MAC with the file-read key, and print the UID, the "
        "read counter and any encrypted file data. The file-read key is given as the tag's "
        "own (--file-key) or derived from the site's SUN file master key for the UID in the "
        "message (--file-master), as the gateway does.",
    )
    verify_sun.add_argument(
        "url", metavar="URL", help="the tapped URL, or just its picc_data=…&enc=…&cmac=… part"
    )
    verify_sun.add_argument(
        "--meta-key", required=True, metavar="HEX|@FILE", help="SDM meta-read key (16 bytes)"
    )
    file_key = verify_sun.add_mutually_exclusive_group(required=True)
    file_key.add_argument("--file-key", metavar="HEX|@FILE", help="SDM file-read key of this tag")
    file_key.add_argument(
        "--file-master",
        metavar="HEX|@FILE",
        help="the site's SUN file master key: each tag's file-read key is derived from it",
    )
    verify_sun.add_argument(
        "--system-identifier",
        metavar="HEX",
        help="with --file-master: the [nfc] system_identifier of the site "
        f"(default {DEFAULT_SYSTEM_IDENTIFIER})",
    )
    verify_sun.add_argument(
        "--aid",
        metavar="HEX",
        help="with --file-master: the AID in the tags' key diversification "
        f"(default {NTAG424_AID.hex().upper()})",
    )
    verify_sun.add_argument("--json", action="store_true")
    verify_sun.set_defaults(func=cmd_tags_verify_sun)

    status = sub.add_parser(
        "status",
        parents=[common],
        help="the running gateway at a glance (exit 0 healthy, 1 needs attention, 2 no answer)",
    )
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=cmd_status)

    diagnostics = sub.add_parser(
        "diagnostics",
        parents=[common],
        help="save the running gateway's diagnostics bundle for support (secrets left out)",
    )
    diagnostics.add_argument("--output", type=Path, help="zip file to write (default: dated)")
    diagnostics.set_defaults(func=cmd_diagnostics)

    sim = sub.add_parser("sim-board", help="run a virtual door board for a gateway to connect to")
    sim.add_argument("--port", required=True, metavar="pty|tcp://HOST:PORT")
    sim.add_argument("--address", type=int, default=1, help="bus address, 1..247 (default 1)")
    sim.add_argument("--doors", type=int, default=2, help="doors on the board (default 2)")
    sim.add_argument(
        "--physics", action="store_true", help="doors open when unlocked and close again"
    )
    sim.set_defaults(func=cmd_sim_board)

    _add_officernd_parsers(sub, common)
    _add_provisioning_parsers(sub, common)
    _add_events_parsers(sub, common)
    return parser


def _add_events_parsers(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    events = sub.add_parser("events", help="the local event journal").add_subparsers(
        dest="events_command", required=True
    )
    export = events.add_parser(
        "export",
        parents=[common],
        help="write the journal's events of a time range as CSV (works with or without the daemon)",
        description="Write the events with FROM <= at < TO from the gateway's local journal "
        "(state_dir/journal.db, opened read-only) as CSV. Dates and date-times without an "
        "offset are read in the site's timezone (from the cache; UTC without one).",
    )
    export.add_argument(
        "--from",
        dest="start",
        required=True,
        metavar="DATE",
        help="start, included: 2026-01-01, 2026-01-01T08:00 or 2026-01-01T08:00:00+01:00",
    )
    export.add_argument(
        "--to", dest="end", required=True, metavar="DATE", help="end, excluded (same forms)"
    )
    export.add_argument(
        "--type",
        action="append",
        metavar="TYPE",
        help="only events of this type, e.g. access.denied (repeat or separate with commas)",
    )
    export.add_argument("--door", metavar="DOOR", help="only events at this door")
    export.add_argument(
        "--timezone", metavar="IANA", help="local time of the dates and of local_time"
    )
    export.add_argument(
        "--output", type=Path, metavar="FILE", help="CSV file to write, mode 0600 (default: stdout)"
    )
    export.set_defaults(func=cmd_events_export)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        status: int = args.func(args)
    except CliError as err:
        print(f"luckey-gateway: {err}", file=sys.stderr)
        return EXIT_USAGE
    return status
