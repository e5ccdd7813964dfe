"""Verification cost per presentation, for each credential kind.

Proofs are made beforehand by the card emulators and the reference phone (not timed); each
sample times one call of the gateway's verifier for that kind, as the entry path makes it:
parsing the proof, redeeming its challenge, the cryptography and the cache lookup. Baselines,
timed interleaved in the same loop so that machine noise hits both: one bare AES-CMAC of 16
bytes for the NFC kinds (the primitive they are built from) and one bare ECDSA P-256
verification for BLE.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import secrets
import statistics
import time
from collections.abc import Callable
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from bench.decision import percentile
from drivers.nfc_emulators import DesfireCard, Ntag424Tag
from drivers.reference_phone import ReferencePhone
from gateway.ble_protocol import ReaderHandshake
from gateway.ble_verifier import BlePhoneVerifier
from gateway.challenges import ChallengeBook
from gateway.credentials import Lookup, Verified, Verifier
from gateway.diversify import aes_cmac
from gateway.model import AssuranceLevel, Credential, CredentialKind, Presentation
from gateway.nfc_cards import CardReading, NfcKeys, read_iso_dep_card
from gateway.nfc_verifiers import DesfireVerifier, Ntag424Verifier
from gateway.reader_identity import ReaderIdentity
from gateway.sun_counters import SunCounters

UID = bytes.fromhex("04A0B0C0D0E0F1")


@dataclasses.dataclass(slots=True)
class Case:
    """One kind: its verifier, pre-made presentations, the outcome each must have, a baseline."""

    verifier: Verifier
    presentations: list[Presentation]
    lookup: Lookup
    expected: AssuranceLevel
    baseline: Callable[[], object]


def _nothing_enrolled(kind: CredentialKind, value: str) -> Credential | None:
    return None


def nfc_cases(n: int) -> dict[str, Case]:
    """EV2, SUN and DESFire: ``n`` genuine readings each, from site-personalised emulators."""
    keys = NfcKeys(
        ntag424_master=secrets.token_bytes(16),
        sun_meta_key=secrets.token_bytes(16),
        sun_file_master=secrets.token_bytes(16),
        desfire_master=secrets.token_bytes(16),
        desfire_aid=bytes.fromhex("4C5501"),
        system_identifier=b"LUCKEY",
    )
    sun_reader = dataclasses.replace(keys, ntag424_master=None)  # reads the SUN message
    challenges = ChallengeBook(capacity=4 * n)
    ntag = Ntag424Verifier(keys, challenges, SunCounters())
    desfire = DesfireVerifier(keys, challenges)
    tag = Ntag424Tag.for_site(UID, keys, sun_enabled=True)
    card = DesfireCard.for_site(UID, keys)
    block = secrets.token_bytes(16)
    cmac_key = secrets.token_bytes(16)

    def cmac() -> object:
        return aes_cmac(cmac_key, block)

    def presentations(read: Callable[[], CardReading]) -> list[Presentation]:
        return [Presentation("door", r.kind, r.value, r.proof) for r in (read() for _ in range(n))]

    return {
        "ev2": Case(
            ntag,
            presentations(lambda: read_iso_dep_card(UID, tag.respond, keys, challenges)),
            _nothing_enrolled,
            AssuranceLevel.HIGH,
            cmac,
        ),
        "sun": Case(
            ntag,
            presentations(lambda: read_iso_dep_card(UID, tag.respond, sun_reader, challenges)),
            _nothing_enrolled,
            AssuranceLevel.MEDIUM,
            cmac,
        ),
        "desfire": Case(
            desfire,
            presentations(lambda: read_iso_dep_card(UID, card.respond, keys, challenges)),
            _nothing_enrolled,
            AssuranceLevel.HIGH,
            cmac,
        ),
    }


def ble_case(n: int) -> Case:
    """``n`` phone transcripts from the reference phone, verified against its enrolled key."""
    identity = ReaderIdentity.generate()
    challenges = ChallengeBook(capacity=2 * n)
    phone = ReferencePhone.generate({identity.reader_id: identity.public_key})
    enrolled = Credential(
        "phone-1",
        "user-1",
        CredentialKind.BLE_PHONE_KEY,
        phone.key_id.hex().upper(),
        AssuranceLevel.HIGH,
        public_key=phone.public_key_bytes,
    )

    def lookup(kind: CredentialKind, value: str) -> Credential | None:
        return enrolled if value == enrolled.value else None

    def exchange() -> Presentation:
        handshake = ReaderHandshake(identity, challenges.issue(16), phone.ephemeral_id)
        phone.on_write(handshake.hello())
        phone.on_write(handshake.prove(phone.read_reply()))
        claim = handshake.finish(phone.read_reply())
        return Presentation("door", CredentialKind.BLE_PHONE_KEY, claim.value, claim.proof)

    signer = ec.generate_private_key(ec.SECP256R1())
    message = secrets.token_bytes(32)
    signature = signer.sign(message, ec.ECDSA(hashes.SHA256()))
    public = signer.public_key()

    def ecdsa_verify() -> object:
        public.verify(signature, message, ec.ECDSA(hashes.SHA256()))
        return None

    return Case(
        BlePhoneVerifier(challenges),
        [exchange() for _ in range(n)],
        lookup,
        AssuranceLevel.HIGH,
        ecdsa_verify,
    )


def measure(case: Case) -> tuple[list[float], list[float]]:
    """Seconds per verification and per baseline call, interleaved; every result checked."""
    timer = time.perf_counter
    verify_s: list[float] = []
    baseline_s: list[float] = []
    for presentation in case.presentations:
        start = timer()
        result = case.verifier(presentation, case.lookup)
        verify_s.append(timer() - start)
        start = timer()
        case.baseline()
        baseline_s.append(timer() - start)
        if not isinstance(result, Verified) or result.assurance is not case.expected:
            raise RuntimeError(f"a genuine presentation did not verify: {result}")
    return verify_s, baseline_s


def main(argv: list[str]) -> int:
    """Run the benchmark; the last line printed is one JSON object."""
    parser = argparse.ArgumentParser(prog="python -m bench credentials")
    parser.add_argument("--samples", type=int, default=5000, help="presentations per kind")
    args = parser.parse_args(argv)

    figures: dict[str, Any] = {"samples": args.samples}
    cases = {**nfc_cases(args.samples), "ble": ble_case(args.samples)}
    for name, case in cases.items():
        verify_s, baseline_s = measure(case)
        unit, scale = ("ms", 1e3) if name == "ble" else ("us", 1e6)
        p50, p99 = statistics.median(verify_s) * scale, percentile(verify_s, 0.99) * scale
        base = "ecdsa" if name == "ble" else "cmac"
        base_p99 = percentile(baseline_s, 0.99) * scale
        print(
            f"{name:8} verify p50 {p50:8.3f} {unit}  p99 {p99:8.3f} {unit}   "
            f"bare {base} p99 {base_p99:8.3f} {unit}  ratio {p99 / base_p99:5.1f}"
        )
        figures[f"{name}_verify_p50_{unit}"] = round(p50, 3)
        figures[f"{name}_verify_p99_{unit}"] = round(p99, 3)
        figures[f"{name}_bare_{base}_p99_{unit}"] = round(base_p99, 3)
        figures[f"{name}_ratio_p99"] = round(p99 / base_p99, 2)
    print(json.dumps(figures))
    return 0
