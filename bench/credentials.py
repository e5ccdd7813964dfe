"""Verification cost per presentation, for each credential kind.

Proofs are made beforehand by the card emulators and the reference phone (not timed); each
sample times one call of the gateway's verifier for that kind, as the entry path makes it:
parsing the proof, redeeming its challenge, the cryptography and the cache lookup. Baselines,
timed interleaved in the same loop so that machine noise hits both: one bare AES-CMAC of 16
bytes for the NFC kinds (the primitive they are built from) and one bare ECDSA P-256
verification for BLE.

BLE end to end (``--ble-runs``): a whole gateway on the virtual backend, its bleak-based BLE
reader on a virtual radio (bumble), and the reference phone advertising every
``--adv-interval-ms``: from the first advertisement the reader hears to the decision taken,
the door driven and its event committed. Its floor is two advertising intervals (the reader
acts on the second sample and the link forms on the next advertisement).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import secrets
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from bench.decision import free_port
from bench.stats import percentile
from drivers.base import CredentialRead
from drivers.ble_reader import BleReader, ExchangeTiming
from drivers.bleak_bumble import VirtualRadio
from drivers.nfc_emulators import DesfireCard, Ntag424Tag
from drivers.reference_phone import ReferencePhone
from drivers.sim_phone import SimPhone
from gateway.app import Gateway
from gateway.ble_protocol import ReaderHandshake
from gateway.ble_verifier import BlePhoneVerifier
from gateway.challenges import ChallengeBook
from gateway.config import parse_config
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


async def ble_end_to_end(runs: int, interval_ms: float) -> list[float]:
    """Seconds from a phone's first advertisement heard to its decision, ``runs`` times."""
    with tempfile.TemporaryDirectory() as state:
        config = parse_config(
            {
                "gateway": {"state_dir": str(Path(state) / "state")},
                "web": {"port": free_port()},
                "hardware": {"backend": "virtual"},
            }
        )
        gw = Gateway(config)
        await gw.start()
        try:
            return await _phone_runs(gw, runs, interval_ms)
        finally:
            await gw.stop()


async def _phone_runs(gw: Gateway, runs: int, interval_ms: float) -> list[float]:
    identity = gw.secrets.reader
    assert identity is not None
    phone = ReferencePhone.generate({identity.reader_id: identity.public_key})
    await gw.enrolment.enrol_phone("ada", phone.public_key_bytes)
    loop = asyncio.get_running_loop()
    read_at: dict[str, float] = {}
    decided: asyncio.Queue[tuple[float, bool]] = asyncio.Queue()
    timings: asyncio.Queue[ExchangeTiming] = asyncio.Queue()
    tasks: set[asyncio.Task[None]] = set()

    async def decide(read: CredentialRead) -> None:
        decision = await gw.entry.handle(read)
        await decided.put((loop.time(), decision.granted))

    def on_read(read: CredentialRead) -> None:
        read_at[read.value] = loop.time()
        task = loop.create_task(decide(read))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    async with VirtualRadio() as radio:
        central = await radio.add_central()
        reader = BleReader(
            "server-room",
            "near",
            identity,
            gw.ble_challenges,
            scanner_backend=central.scanner_backend,
            client_backend=central.client_backend,
            on_timing=timings.put_nowait,
        )
        reader.set_handler(on_read)
        reader.start()
        out: list[float] = []
        try:
            for _ in range(runs):
                phone.rotate()  # a new ephemeral id: a phone arriving, not one in cooldown
                async with SimPhone(radio, phone, interval_ms=interval_ms):
                    timing = await asyncio.wait_for(timings.get(), 10)
                    done_at, granted = await asyncio.wait_for(decided.get(), 10)
                if not granted:
                    raise RuntimeError("an enrolled phone was not let in")
                out.append(
                    timing.first_advert_to_read_s + done_at - read_at[phone.key_id.hex().upper()]
                )
        finally:
            await reader.stop()
        return out


def main(argv: list[str]) -> int:
    """Run the benchmark; the last line printed is one JSON object."""
    parser = argparse.ArgumentParser(prog="python -m bench credentials")
    parser.add_argument("--samples", type=int, default=5000, help="presentations per kind")
    parser.add_argument("--ble-runs", type=int, default=100, help="BLE end-to-end runs (0: none)")
    parser.add_argument("--adv-interval-ms", type=float, default=100.0, help="phone advertising")
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
    if args.ble_runs:
        e2e = asyncio.run(ble_end_to_end(args.ble_runs, args.adv_interval_ms))
        p50, p99 = statistics.median(e2e) * 1e3, percentile(e2e, 0.99) * 1e3
        floor = 2 * args.adv_interval_ms
        print(
            f"ble e2e  first advert → decision p50 {p50:.1f} ms  p99 {p99:.1f} ms   "
            f"floor {floor:.0f} ms (2 advertising intervals)  ratio {p99 / floor:.2f}"
        )
        figures["ble_e2e_runs"] = len(e2e)
        figures["ble_adv_interval_ms"] = args.adv_interval_ms
        figures["ble_e2e_p50_ms"] = round(p50, 1)
        figures["ble_e2e_p99_ms"] = round(p99, 1)
        figures["ble_e2e_floor_ms"] = floor
        figures["ble_e2e_ratio_p99"] = round(p99 / floor, 2)
    print(json.dumps(figures))
    return 0
