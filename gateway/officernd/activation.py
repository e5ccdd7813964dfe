"""OfficeRnD activation: the organisation and API application this gateway follows, checked and kept.

Activation is entered once (web app or CLI), checked against OfficeRnD with one real request,
and only then stored, in the state directory's ``officernd/`` folder (0700):

- ``activation.json`` (0600): ``org``, ``client_id``, ``api_base``, ``identity_url``,
  ``activated_at`` (ISO-8601 UTC) and, once a webhook is registered, ``webhook_id``;
- ``client_secret`` (0600): the client secret, one line;
- ``webhook_secret`` (0600, optional): the signing secret of the registered webhook.

Secrets live in their own files so ``activation.json`` can be shown and copied safely; they
never reach a log line, an exception or ``repr``. Every file is replaced atomically; a symbolic
link where a file or the folder should be, or a secret readable by group or others, is refused
with a sentence saying what to do. ``activation.json`` is written last, so it marks a whole
activation.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import math
import os
import re
import secrets
import stat
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

from gateway.config import OfficeRnDSection, https_or_loopback
from gateway.credentials import redact
from gateway.files import sync_directory
from gateway.officernd.client import (
    DEFAULT_API_BASE,
    DEFAULT_IDENTITY_URL,
    READ_SCOPES,
    SIGNIN,
    WEBHOOKS_CREATE,
    ActivationReport,
    ApiError,
    BadCredentials,
    MissingScope,
    OfficeRnDClient,
    OfficeRnDError,
    OfficeRnDSettings,
    OrganizationNotFound,
    RateLimited,
    Unreachable,
)

_LOGGER = logging.getLogger(__name__)

FOLDER = "officernd"
ACTIVATION_FILE = "activation.json"
CLIENT_SECRET_FILE = "client_secret"  # noqa: S105 - a file name, not a secret
WEBHOOK_SECRET_FILE = "webhook_secret"  # noqa: S105

#: Activation is interactive: a couple of quick retries, then the operator is told.
ACTIVATION_MAX_RETRIES = 2
ACTIVATION_TIMEOUT_S = 15.0

ORG_MAX = 100
CLIENT_ID_MAX = 200
SECRET_MAX = 1000
_ORG = re.compile(rf"[A-Za-z0-9_-]{{1,{ORG_MAX}}}")
#: Read at most this much of a secret file: anything longer is not a secret we wrote.
_SECRET_FILE_MAX_BYTES = 4 * SECRET_MAX
_JSON_MAX_BYTES = 64 * 1024
_WHERE_APPS = "Settings → Data & Extensibility → Developer Tools"
_WHERE_ORG = "OfficeRnD → Settings → General, or the admin URL …/admin/<name>"
_ACTIVATE = "luckey-gateway officernd activate"
_DEACTIVATE = "luckey-gateway officernd deactivate"


class ActivationError(OfficeRnDError):
    """Activation values that cannot be used: bad input, or stored files damaged or unsafe."""


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _check_org(org: str) -> None:
    if not _ORG.fullmatch(org):
        raise ActivationError(
            f"{org!r} is not an administration portal name: expected 1 to {ORG_MAX} letters, "
            f"digits, - or _ (find it under {_WHERE_ORG})"
        )


def _check_client_id(client_id: str) -> None:
    if not client_id or len(client_id) > CLIENT_ID_MAX or not client_id.isprintable():
        raise ActivationError(
            f"the Client ID must be 1 to {CLIENT_ID_MAX} printable characters (copy it from "
            f"{_WHERE_APPS})"
        )


def _check_secret(secret: str, what: str) -> None:
    """A one-line secret of 1 to SECRET_MAX characters; the error never shows it."""
    if not secret:
        raise ActivationError(f"the {what} is empty")
    if len(secret) > SECRET_MAX:
        raise ActivationError(f"the {what} is over {SECRET_MAX} characters")
    if "\n" in secret or "\r" in secret:
        raise ActivationError(f"the {what} holds a line break")


def _check_url(url: str, what: str) -> None:
    if not https_or_loopback(url) or urllib.parse.urlsplit(url).query:
        # A URL with a user name or password is refused without showing it.
        shown = "with credentials in it" if "@" in url else repr(url)
        raise ActivationError(
            f"the {what} {shown} is not allowed: expected an https:// URL (http:// only to "
            "127.0.0.1, localhost or [::1], for tests)"
        )


@dataclass(frozen=True, slots=True)
class Activation:
    """An activated organisation and the API application that reads it; secrets kept out of repr."""

    org: str
    client_id: str
    client_secret: str = field(repr=False)
    api_base: str
    identity_url: str
    activated_at: datetime
    webhook_id: str | None = None
    webhook_secret: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        _check_org(self.org)
        _check_client_id(self.client_id)
        _check_secret(self.client_secret, "Client Secret")
        _check_url(self.api_base, "API base URL")
        _check_url(self.identity_url, "identity URL")
        if self.activated_at.tzinfo is None:
            raise ActivationError("the activation time has no UTC offset")
        if (self.webhook_id is None) != (self.webhook_secret is None):
            raise ActivationError("a webhook needs both its id and its signing secret")
        if self.webhook_id is not None and not self.webhook_id.isprintable():
            raise ActivationError("the webhook id is not printable text")
        if self.webhook_secret is not None:
            _check_secret(self.webhook_secret, "webhook signing secret")

    def settings(self, scopes: Sequence[str] = READ_SCOPES) -> OfficeRnDSettings:
        """The client settings of this activation, asking for ``scopes``."""
        return OfficeRnDSettings(
            org=self.org,
            client_id=self.client_id,
            client_secret=self.client_secret,
            api_base=self.api_base,
            identity_url=self.identity_url,
            scopes=tuple(scopes),
        )


def scopes_for(section: OfficeRnDSection) -> tuple[str, ...]:
    """The scopes a configuration needs: reading, plus sign-in and webhook creation if used."""
    scopes = [*READ_SCOPES]
    if section.login:
        scopes.append(SIGNIN)
    if section.webhook_url:
        scopes.append(WEBHOOKS_CREATE)
    return tuple(scopes)


# --- files ------------------------------------------------------------------------------------


def folder(state_dir: Path) -> Path:
    """Where the activation files live."""
    return state_dir / FOLDER


def _refuse_link(path: Path) -> None:
    if path.is_symlink():
        raise ActivationError(
            f"{path} is a symbolic link: the gateway keeps its OfficeRnD files itself; remove "
            f"the link and activate again ({_ACTIVATE})"
        )


def _make_folder(state_dir: Path) -> Path:
    """The activation folder, created if need be, mode 0700."""
    directory = folder(state_dir)
    _refuse_link(directory)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(directory, 0o700)  # mkdir's mode passes through the umask; and an older folder
    return directory


def _write_private(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` (0600) atomically: a crash leaves the old or the new."""
    _refuse_link(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(text.encode("utf-8"))
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    sync_directory(path.parent)


def _read_at_most(fd: int, limit: int) -> bytes:
    """The file's bytes, or its first ``limit + 1`` if longer (for the caller to refuse)."""
    chunks: list[bytes] = []
    size = 0
    while size <= limit:
        chunk = os.read(fd, limit + 1 - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def _read_private(path: Path, *, secret: bool) -> str | None:
    """The text of ``path``, None if absent; a link, a non-file or a shared secret refused."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    except OSError as err:
        if err.errno == errno.ELOOP:
            _refuse_link(path)
        raise ActivationError(f"cannot read {path}: {err.strerror or err}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ActivationError(f"{path} is not a regular file: remove it and activate again")
        mode = stat.S_IMODE(info.st_mode)
        if secret and mode & 0o077:
            raise ActivationError(
                f"{path} is readable by others than the gateway (mode {mode:04o}): it holds a "
                f"secret; run `chmod 600 {path}`"
            )
        data = _read_at_most(fd, _SECRET_FILE_MAX_BYTES if secret else _JSON_MAX_BYTES)
    finally:
        os.close(fd)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ActivationError(f"{path} is not UTF-8 text: {_ACTIVATE} again") from None


def _read_secret(path: Path) -> str | None:
    """A secret file's one line (without its newline), None if absent."""
    text = _read_private(path, secret=True)
    if text is None:
        return None
    value = text.removesuffix("\n")
    try:
        _check_secret(value, "secret")
    except ActivationError as err:
        raise ActivationError(f"{path}: {err}: {_ACTIVATE} again") from None
    return value


def _to_json(activation: Activation) -> str:
    data: dict[str, Any] = {
        "org": activation.org,
        "client_id": activation.client_id,
        "api_base": activation.api_base,
        "identity_url": activation.identity_url,
        "activated_at": activation.activated_at.astimezone(UTC).isoformat().replace("+00:00", "Z"),
    }
    if activation.webhook_id is not None:
        data["webhook_id"] = activation.webhook_id
    return json.dumps(data, indent=2) + "\n"


def _from_json(text: str, client_secret: str, webhook_secret: str | None) -> Activation:
    """An Activation from ``activation.json``'s text; ActivationError (no path) if unusable."""
    try:
        data = json.loads(text)
    except ValueError:
        raise ActivationError("not valid JSON") from None
    if not isinstance(data, dict):
        raise ActivationError("not a JSON object")
    names = ("org", "client_id", "api_base", "identity_url", "activated_at")
    missing = [name for name in names if not isinstance(data.get(name), str)]
    if missing:
        raise ActivationError(f"{', '.join(missing)} missing or not text")
    webhook_id = data.get("webhook_id")
    if webhook_id is not None and not isinstance(webhook_id, str):
        raise ActivationError("webhook_id is not text")
    if webhook_id is not None and webhook_secret is None:
        raise ActivationError(f"it names webhook {webhook_id} but {WEBHOOK_SECRET_FILE} is missing")
    try:
        activated_at = datetime.fromisoformat(data["activated_at"])
    except ValueError:
        raise ActivationError(f"activated_at {data['activated_at']!r} is not a time") from None
    return Activation(
        org=data["org"],
        client_id=data["client_id"],
        client_secret=client_secret,
        api_base=data["api_base"],
        identity_url=data["identity_url"],
        activated_at=activated_at,
        webhook_id=webhook_id,
        # A secret without an id is left from a crash between the two writes: not a webhook.
        webhook_secret=webhook_secret if webhook_id is not None else None,
    )


def load_activation(state_dir: Path) -> Activation | None:
    """The stored activation; None if there is none; ActivationError if damaged or unsafe."""
    directory = folder(state_dir)
    _refuse_link(directory)
    if not directory.exists():
        return None
    json_path = directory / ACTIVATION_FILE
    text = _read_private(json_path, secret=False)
    client_secret = _read_secret(directory / CLIENT_SECRET_FILE)
    if text is None:
        if client_secret is None:
            return None
        raise ActivationError(
            f"{directory} holds a client secret but no {ACTIVATION_FILE} (an activation cut "
            f"short): {_ACTIVATE} again, or `{_DEACTIVATE}` to clear it"
        )
    if client_secret is None:
        raise ActivationError(
            f"{json_path} is there but {directory / CLIENT_SECRET_FILE} is missing: "
            f"{_ACTIVATE} again"
        )
    webhook_secret = _read_secret(directory / WEBHOOK_SECRET_FILE)
    try:
        return _from_json(text, client_secret, webhook_secret)
    except ActivationError as err:
        raise ActivationError(
            f"{json_path} is damaged ({err}): {_ACTIVATE} again, or `{_DEACTIVATE}` to clear it"
        ) from None


def save_activation(state_dir: Path, activation: Activation) -> None:
    """Store ``activation``, replacing any other; secrets first, ``activation.json`` last."""
    directory = _make_folder(state_dir)
    _write_private(directory / CLIENT_SECRET_FILE, activation.client_secret + "\n")
    webhook_path = directory / WEBHOOK_SECRET_FILE
    if activation.webhook_secret is not None:
        _write_private(webhook_path, activation.webhook_secret + "\n")
    else:
        _refuse_link(webhook_path)
        webhook_path.unlink(missing_ok=True)
    _write_private(directory / ACTIVATION_FILE, _to_json(activation))


def save_webhook(state_dir: Path, webhook_id: str | None, secret: str | None) -> Activation:
    """Record the registered webhook (or, both None, forget it); the activation now stored."""
    activation = load_activation(state_dir)
    if activation is None:
        raise ActivationError(f"OfficeRnD is not activated: {_ACTIVATE} first")
    updated = replace(activation, webhook_id=webhook_id, webhook_secret=secret)
    save_activation(state_dir, updated)
    if webhook_id is not None:
        _LOGGER.info("OfficeRnD webhook %s recorded", webhook_id)
    return updated


def remove_activation(state_dir: Path) -> bool:
    """Delete the activation files; True if any was there."""
    directory = folder(state_dir)
    _refuse_link(directory)
    removed = False
    for name in (ACTIVATION_FILE, CLIENT_SECRET_FILE, WEBHOOK_SECRET_FILE):
        path = directory / name
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # a link is removed, never followed
            removed = True
    if removed:
        sync_directory(directory)
        _LOGGER.info("OfficeRnD activation removed")
    return removed


# --- activating -------------------------------------------------------------------------------


async def activate(
    state_dir: Path,
    org: str,
    client_id: str,
    client_secret: str,
    *,
    api_base: str = DEFAULT_API_BASE,
    identity_url: str = DEFAULT_IDENTITY_URL,
    scopes: Sequence[str] = READ_SCOPES,
    session: aiohttp.ClientSession | None = None,
    clock: Callable[[], datetime] = _utc_now,
) -> tuple[Activation, ActivationReport]:
    """Check these values against OfficeRnD and, only if they work, store them.

    ``org``, ``client_id`` and the URLs are taken without surrounding spaces. The URLs must be
    https://, except http:// to 127.0.0.1, localhost or [::1], allowed for testing against a
    local fake. ActivationError for unusable input; the client's errors (BadCredentials,
    MissingScope, OrganizationNotFound, RateLimited, Unreachable, ApiError) unchanged if the
    check fails. Nothing is stored on failure. A webhook already recorded for the same
    organisation and API base is kept (webhooks belong to the organisation, not the app).
    """
    org, client_id = org.strip(), client_id.strip()
    api_base, identity_url = api_base.strip(), identity_url.strip()
    activation = Activation(
        org=org,
        client_id=client_id,
        client_secret=client_secret,
        api_base=api_base,
        identity_url=identity_url,
        activated_at=clock(),
    )
    settings = activation.settings(scopes)
    if session is None:
        async with aiohttp.ClientSession() as own:
            report = await _check(settings, own)
    else:
        report = await _check(settings, session)
    activation = _keep_webhook(state_dir, activation)
    save_activation(state_dir, activation)
    _LOGGER.info("OfficeRnD activated for organisation %r (client id %s)", org, redact(client_id))
    return activation, report


async def _check(settings: OfficeRnDSettings, session: aiohttp.ClientSession) -> ActivationReport:
    client = OfficeRnDClient(
        settings,
        session,
        request_timeout_s=ACTIVATION_TIMEOUT_S,
        max_retries=ACTIVATION_MAX_RETRIES,
    )
    return await client.check()


def _keep_webhook(state_dir: Path, activation: Activation) -> Activation:
    """``activation`` with the stored webhook, if the stored activation is of the same org."""
    try:
        previous = load_activation(state_dir)
    except ActivationError:
        return activation  # replaced whole: the new activation is what repairs it
    if (
        previous is None
        or previous.webhook_id is None
        or (previous.org, previous.api_base) != (activation.org, activation.api_base)
    ):
        return activation
    return replace(
        activation, webhook_id=previous.webhook_id, webhook_secret=previous.webhook_secret
    )


def describe_failure(err: Exception, *, org: str | None = None) -> str:
    """One sentence for an operator saying what went wrong with activation and what to do."""
    if isinstance(err, BadCredentials):
        return f"OfficeRnD refused the client id and secret: check them in {_WHERE_APPS}"
    if isinstance(err, MissingScope):
        if err.scope is None:
            return f"{err} (then activate again)"
        return (
            f"the OfficeRnD application lacks the permission {err.scope}: grant it in "
            f"{_WHERE_APPS}, then activate again"
        )
    if isinstance(err, OrganizationNotFound):
        if org is None:
            return str(err)
        return (
            f"OfficeRnD has no organisation {org!r}: check the administration portal name "
            f"under {_WHERE_ORG}"
        )
    if isinstance(err, RateLimited):
        if err.retry_after_s is None:
            return "OfficeRnD is rate limiting this gateway: try again in a minute"
        return (
            "OfficeRnD is rate limiting this gateway: try again in "
            f"{max(1, math.ceil(err.retry_after_s))} s"
        )
    if isinstance(err, Unreachable):
        status = f" (last answer HTTP {err.status})" if err.status is not None else ""
        return (
            f"OfficeRnD could not be reached{status}: check the network and the API base and "
            f"identity URLs, then try again ({err})"
        )
    if isinstance(err, ApiError | ActivationError):
        return str(err)
    return f"activation failed: {type(err).__name__}: {err}"
