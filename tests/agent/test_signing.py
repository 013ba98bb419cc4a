"""The encodings and the signature check that every seal check relies on.

`b32` and `auth_code` were rewritten for speed: they must give exactly what the standard library
gives. `VerifyingKey` asks libsodium first and OpenSSL on a refusal: its answer must be OpenSSL's
on every signature, valid, damaged or crafted (small-order keys, out-of-range scalars).
"""
from __future__ import annotations

import base64
import hashlib

import pytest
from hypothesis import given, settings, strategies as st
from nacl.bindings import crypto_sign_open
from nacl.exceptions import BadSignatureError

from fiscal.signing import (
    CODE_LENGTH, VerifyingKey, auth_code, b32, generate_private_key, load_public_key, load_verifying_key,
    public_key_text, unb32, verify, weak_public_key,
)

# Ed25519's group order: a scalar S must be below it.
L = 2**252 + 27742317777372353535851937790883648493
IDENTITY = (1).to_bytes(32, "little")  # the neutral point (x = 0, y = 1): order 1
ORDER_2 = (2**255 - 19 - 1).to_bytes(32, "little")  # (0, -1): order 2
KEY = generate_private_key()
KEY_TEXT = public_key_text(KEY)


def openssl(raw_key: bytes, signature: bytes, message: bytes) -> bool:
    return verify(load_public_key(base64.urlsafe_b64encode(raw_key).decode().rstrip("=")), signature, message)


def sodium(raw_key: bytes, signature: bytes, message: bytes) -> bool:
    try:
        crypto_sign_open(signature + message, raw_key)
    except BadSignatureError:
        return False
    return True


@given(st.binary(max_size=300))
def test_b32_is_the_standard_encoding_without_padding(data):
    assert b32(data) == base64.b32encode(data).decode("ascii").rstrip("=")
    assert unb32(b32(data)) == data


@given(st.binary(min_size=64, max_size=64))
def test_auth_code_is_the_cut_base32_of_the_whole_digest(signature):
    code = auth_code(signature)
    assert len(code) == CODE_LENGTH
    assert code == base64.b32encode(hashlib.sha256(signature).digest()).decode("ascii")[:CODE_LENGTH]


@settings(max_examples=150)
@given(message=st.binary(max_size=400), flip=st.integers(min_value=-1, max_value=8 * (64 + 32) - 1),
       other_key=st.booleans())
def test_verifying_key_answers_as_openssl_on_valid_and_damaged_signatures(message, flip, other_key):
    key = generate_private_key() if other_key else KEY
    signature = bytearray(key.sign(message))
    raw = bytearray(load_public_key(KEY_TEXT).public_bytes_raw())
    if 0 <= flip < 512:  # one bit of the signature
        signature[flip // 8] ^= 1 << (flip % 8)
    elif flip >= 512:  # one bit of the key
        raw[(flip - 512) // 8] ^= 1 << (flip % 8)
    try:
        verifying = VerifyingKey(bytes(raw))
    except ValueError:  # a key OpenSSL does not load is refused by both loaders alike
        with pytest.raises(ValueError):
            load_public_key(base64.urlsafe_b64encode(bytes(raw)).decode().rstrip("="))
        return
    expected = openssl(bytes(raw), bytes(signature), message)
    assert verifying.verify(bytes(signature), message) is expected
    assert verify(verifying, bytes(signature), message) is expected
    assert expected is (flip == -1 and not other_key)  # only the untouched signature is valid


def crafted() -> list[tuple[str, bytes, bytes, bytes]]:
    """(name, key, signature, message): inputs where the two libraries' rules differ."""
    message = b"RDCSTL01;DC-CRAFTED;A1234567B"
    valid = KEY.sign(message)
    raw = load_public_key(KEY_TEXT).public_bytes_raw()
    s = int.from_bytes(valid[32:], "little")
    return [
        # R = identity, S = 0 under the identity key: [0]B = O + [h]O holds for any message.
        ("identity key, identity R, S=0", IDENTITY, IDENTITY + bytes(32), message),
        ("order-2 key, identity R, S=0", ORDER_2, IDENTITY + bytes(32), message),
        ("S + L (non-canonical scalar)", raw, valid[:32] + (s + L).to_bytes(32, "little"), message),
        ("short signature", raw, valid[:63], message),
        ("valid", raw, valid, message),
    ]


@pytest.mark.parametrize("name,key,signature,message", crafted(), ids=[c[0] for c in crafted()])
def test_verifying_key_answers_as_openssl_on_crafted_signatures(name, key, signature, message):
    assert VerifyingKey(key).verify(signature, message) is openssl(key, signature, message)


def test_openssl_decides_where_libsodium_refuses():
    """The reason for the fallback: libsodium refuses a small-order key that OpenSSL accepts."""
    _, key, signature, message = crafted()[0]
    assert openssl(key, signature, message) is True
    assert sodium(key, signature, message) is False
    assert VerifyingKey(key).verify(signature, message) is True


def test_load_verifying_key_refuses_what_load_public_key_refuses():
    with pytest.raises(ValueError):
        load_verifying_key(base64.urlsafe_b64encode(b"\x01" * 31).decode())
    assert load_verifying_key(KEY_TEXT).raw == load_public_key(KEY_TEXT).public_bytes_raw()


def _text(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


@pytest.mark.parametrize("raw", [IDENTITY, ORDER_2, bytes(32), (2**255 - 19 + 1).to_bytes(32, "little")],
                         ids=["identity", "order 2", "order 4 (y = 0)", "non-canonical y = p + 1"])
def test_weak_keys_are_recognised(raw):
    assert weak_public_key(_text(raw))


def test_generated_keys_are_not_weak():
    assert not any(weak_public_key(public_key_text(generate_private_key())) for _ in range(200))
