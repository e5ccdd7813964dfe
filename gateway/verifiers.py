"""Which proofs this gateway can check: each kind's verifier, built from the site's key files.

The keys are secrets in files of the state directory (0600, see gateway/site_keys.py): the
mechatronic site key, the NFC master keys and the BLE reader key. A kind whose key is missing
or unusable keeps the refusing verifier (``proof_invalid``): an unchecked proof never opens a
door, and a broken key file never stops the gateway. The virtual backend makes random keys of
its own on first start, unique to that gateway.

The modules behind each kind (cryptography's bindings, a few MB) are imported only for the kinds
whose keys are there.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from gateway.challenges import ChallengeBook
from gateway.config import Config
from gateway.credentials import DEFAULT_VERIFIERS, Verifier
from gateway.model import CredentialKind
from gateway.site_keys import SITE_KEY_FILE, SiteKeyError, load_site_key

if TYPE_CHECKING:
    from gateway.nfc_cards import NfcKeys
    from gateway.reader_identity import ReaderIdentity
    from gateway.sun_counters import SunCounters

_LOGGER = logging.getLogger(__name__)

NTAG424_MASTER_FILE = "nfc_ntag424_master"
SUN_META_KEY_FILE = "nfc_sun_meta_key"
SUN_FILE_MASTER_FILE = "nfc_sun_file_master"
DESFIRE_MASTER_FILE = "nfc_desfire_master"
READER_KEY_FILE = "ble_reader_key.pem"
SUN_COUNTERS_FILE = "sun_counters.db"


@dataclass(frozen=True, slots=True)
class SiteSecrets:
    """The keys found in the state directory; None: that credential kind is refused."""

    mech_site_key: bytes | None
    nfc: NfcKeys | None
    reader: ReaderIdentity | None


def load_secrets(config: Config) -> SiteSecrets:
    """Read every key file (making random ones on the virtual backend); errors are logged."""
    state_dir = config.gateway.state_dir
    create = config.hardware.backend == "virtual"

    def key(name: str, what: str) -> bytes | None:
        """The key in ``name``, or None with the reason logged (never the key itself)."""
        path = state_dir / name
        try:
            found = load_site_key(path, create=create)
        except SiteKeyError as err:
            _LOGGER.error("%s will be refused: %s", what, err)
            return None
        if found is None:
            _LOGGER.info("no key at %s: %s will be refused", path, what)
        return found

    mech = key(SITE_KEY_FILE, "mechatronic keys")
    ntag = key(NTAG424_MASTER_FILE, "NTAG 424 DNA challenge-response")
    meta = key(SUN_META_KEY_FILE, "NTAG 424 DNA SUN messages")
    file_master = key(SUN_FILE_MASTER_FILE, "NTAG 424 DNA SUN messages")
    desfire = key(DESFIRE_MASTER_FILE, "DESFire cards")
    if (meta is None) != (file_master is None):
        _LOGGER.error(
            "SUN messages will be refused: %s and %s must both be there",
            SUN_META_KEY_FILE,
            SUN_FILE_MASTER_FILE,
        )
        meta = file_master = None
    nfc = None
    if any(k is not None for k in (ntag, meta, desfire)):
        from gateway.nfc_cards import NfcKeys  # noqa: PLC0415

        nfc = NfcKeys(
            ntag424_master=ntag,
            sun_meta_key=meta,
            sun_file_master=file_master,
            desfire_master=desfire,
            desfire_aid=bytes.fromhex(config.nfc.desfire_aid),
            system_identifier=bytes.fromhex(config.nfc.system_identifier),
        )
    reader = None
    reader_file = state_dir / READER_KEY_FILE
    if create or reader_file.exists() or reader_file.is_symlink():
        from gateway.reader_identity import ReaderIdentityError, load_reader_identity  # noqa: PLC0415

        try:
            reader = load_reader_identity(reader_file, create=create)
        except ReaderIdentityError as err:
            _LOGGER.error("phones over BLE will be refused: %s", err)
    else:
        _LOGGER.info("no key at %s: phones over BLE will be refused", reader_file)
    return SiteSecrets(mech, nfc, reader)


def build_verifiers(
    secrets: SiteSecrets,
    counters: SunCounters | None,
    *,
    nfc: ChallengeBook,
    ble: ChallengeBook,
) -> dict[CredentialKind, Verifier]:
    """One verifier per kind whose keys are there; the refusing one for the rest.

    ``nfc`` and ``ble``: the challenge books of the NFC readers and of the BLE readers, apart so
    that phones (or radios pretending to be phones) cannot crowd out the cards' challenges.

    ``counters``: None until the SUN counters are open; NTAG 424 DNA tags are refused until then.
    """
    verifiers = dict(DEFAULT_VERIFIERS)
    if secrets.mech_site_key is not None:
        from gateway.mechkeys import MechanicalKeyVerifier  # noqa: PLC0415

        verifiers[CredentialKind.MECHATRONIC_KEY] = MechanicalKeyVerifier(secrets.mech_site_key)
    if secrets.nfc is not None:
        from gateway.nfc_verifiers import DesfireVerifier, Ntag424Verifier  # noqa: PLC0415

        if secrets.nfc.desfire_master is not None:
            verifiers[CredentialKind.DESFIRE] = DesfireVerifier(secrets.nfc, nfc)
        if counters is not None:
            verifiers[CredentialKind.NTAG424] = Ntag424Verifier(secrets.nfc, nfc, counters)
    if secrets.reader is not None:
        from gateway.ble_verifier import BlePhoneVerifier  # noqa: PLC0415

        verifiers[CredentialKind.BLE_PHONE_KEY] = BlePhoneVerifier(ble)
    return verifiers
