"""TOTP (RFC 6238): the RFC's test vectors, the otpauth URI, drift and replay."""

from __future__ import annotations

import base64
from urllib.parse import parse_qs, urlsplit

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway import totp

#: RFC 6238 Appendix B, SHA-1 rows: the ASCII secret "12345678901234567890", 8 digits.
RFC_SECRET = b"12345678901234567890"
RFC_VECTORS = [
    (59, 0x1, "94287082"),
    (1111111109, 0x23523EC, "07081804"),
    (1111111111, 0x23523ED, "14050471"),
    (1234567890, 0x273EF07, "89005924"),
    (2000000000, 0x3F940AA, "69279037"),
    (20000000000, 0x27BC86AA, "65353130"),
]
NOW = 1_800_000_000.0


@pytest.mark.parametrize(("unix_s", "step", "code"), RFC_VECTORS)
def test_the_rfc_6238_sha1_vectors(unix_s: int, step: int, code: str) -> None:
    assert totp.step_at(unix_s) == step
    assert totp.code_at(RFC_SECRET, unix_s, digits=8) == code
    assert totp.hotp(RFC_SECRET, step, 8) == code
    # Six digits are the last six of the eight (the same value modulo 10^6).
    assert totp.code_at(RFC_SECRET, unix_s) == code[-6:]
    assert totp.accepted_step(RFC_SECRET, code, unix_s, last_step=None, digits=8) == step


def test_the_rfc_4226_hotp_vectors() -> None:
    # RFC 4226 Appendix D: the same secret, counters 0 to 9, 6 digits.
    expected = [
        "755224",
        "287082",
        "359152",
        "969429",
        "338314",
        "254676",
        "287922",
        "162583",
        "399871",
        "520489",
    ]
    assert [totp.hotp(RFC_SECRET, counter) for counter in range(10)] == expected


def test_a_new_secret_is_20_random_bytes_shown_in_base32() -> None:
    secret = totp.new_secret()
    assert len(secret) == 20
    assert secret != totp.new_secret()
    text = totp.to_base32(secret)
    assert len(text) == 32
    assert "=" not in text
    assert totp.from_base32(text) == secret
    grouped = totp.grouped(text)
    assert grouped.split() == [text[i : i + 4] for i in range(0, 32, 4)]
    assert totp.from_base32(grouped.lower()) == secret  # as a person types it back


@given(st.binary(min_size=1, max_size=64))
def test_base32_round_trips(secret: bytes) -> None:
    assert totp.from_base32(totp.to_base32(secret)) == secret


@pytest.mark.parametrize("text", ["", "!!!!", "A", "===="])
def test_what_is_not_base32_is_refused(text: str) -> None:
    with pytest.raises(totp.TotpError):
        totp.from_base32(text)


def test_the_otpauth_uri_names_the_issuer_the_account_and_the_secret() -> None:
    uri = totp.provisioning_uri(RFC_SECRET, "installer@site")
    parts = urlsplit(uri)
    assert (parts.scheme, parts.netloc) == ("otpauth", "totp")
    assert parts.path == "/Luckey%20gateway:installer@site"
    query = parse_qs(parts.query)
    assert query == {"secret": [totp.to_base32(RFC_SECRET)], "issuer": ["Luckey gateway"]}
    assert uri == (
        "otpauth://totp/Luckey%20gateway:installer@site"
        f"?secret={base64.b32encode(RFC_SECRET).decode()}&issuer=Luckey%20gateway"
    )


def test_one_step_of_drift_is_accepted_either_way_and_no_more() -> None:
    secret = totp.new_secret()
    now = totp.step_at(NOW)
    for offset in (-1, 0, 1):
        code = totp.hotp(secret, now + offset)
        assert totp.accepted_step(secret, code, NOW, last_step=None) == now + offset
    for offset in (-2, 2):
        code = totp.hotp(secret, now + offset)
        if code not in {totp.hotp(secret, now + o) for o in (-1, 0, 1)}:  # a 1-in-10^6 clash
            assert totp.accepted_step(secret, code, NOW, last_step=None) is None


def test_a_code_is_good_once() -> None:
    secret = totp.new_secret()
    code = totp.code_at(secret, NOW)
    step = totp.accepted_step(secret, code, NOW, last_step=None)
    assert step == totp.step_at(NOW)
    assert totp.accepted_step(secret, code, NOW, last_step=step) is None
    assert totp.accepted_step(secret, code, NOW + 29, last_step=step) is None
    # Nor an older one still inside the drift window.
    previous = totp.hotp(secret, step - 1)
    assert totp.accepted_step(secret, previous, NOW, last_step=step) is None
    # The next step's code is new.
    following = totp.code_at(secret, NOW + totp.STEP_S)
    assert totp.accepted_step(secret, following, NOW + totp.STEP_S, last_step=step) == step + 1


@pytest.mark.parametrize("code", ["", "12345", "1234567", "12345a", "١٢٣٤٥٦", "+12345"])
def test_what_is_not_six_ascii_digits_is_never_a_code(code: str) -> None:
    secret = totp.new_secret()
    assert totp.accepted_step(secret, code, NOW, last_step=None) is None


def test_spaces_inside_a_code_are_ignored() -> None:
    secret = totp.new_secret()
    code = totp.code_at(secret, NOW)
    assert totp.accepted_step(secret, f" {code[:3]} {code[3:]} ", NOW, last_step=None) is not None
