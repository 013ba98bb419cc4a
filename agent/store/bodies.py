"""How an invoice's JSON text is kept in `invoices.body`: compressed, with a frozen dictionary.

A sealed 10-item invoice is ≈ 4.3 KB of JSON, most of it the same keys and shapes from one
invoice to the next; raw deflate primed with a dictionary of those shapes keeps ≈ 1 KB (the rest
is what cannot shrink: ids, hashes, the signature and the QR payload). Why here and not in the
code that reads: every reader goes through `unpack`, so nothing else knows the format.

Format of a stored value:

* `str` (TEXT): the JSON itself (journals written before compression; still read as is);
* `bytes` (BLOB): one format byte, then the payload. `0x01` = raw deflate (RFC 1951) primed with
  `_DICTIONARY_V1`.

`_DICTIONARY_V1` must never change: stored invoices depend on it byte for byte (a test pins its
SHA-256). A better dictionary is a new format byte with a new constant, the old one kept.
"""
from __future__ import annotations

import zlib

_FORMAT_V1 = 1
_DICTIONARY_V1 = (
    '{"id":"","request_id":"","status":"sealed","mode":"delegated","type":"FV","price_mode":"TTC",'
    '"invoice_number":"","merchant_nif":"","outlet_id":"","isf":"","pos_terminal_id":"","operator":{"id":"",'
    '"name":""},"client":{"address":null,"email":null,"name":"","nif":"","phone":null,"rccm":null,"type":"PM"},'
    '"items":[{"code":"","name":"","original_price":null,"price_change":null,"quantity":"1","specific_tax":null,'
    '"tax_group":"B","type":"BIE","unit_price":".00"},{"code":"","name":"","original_price":null,'
    '"price_change":null,"quantity":"1","specific_tax":null,"tax_group":"A","type":"SER","unit_price":".00"}],'
    '"lines":[{"ht":".00","specific_tax":"0.00","total":".00","vat":".00"},{"ht":".00","specific_tax":"0.00",'
    '"total":".00","vat":".00"}],"comments":{},"reference":null,"usd_rate":null,"totals":{"by_group":{"A":{"ht":"",'
    '"rate":"0.00","total":"","vat":"0.00"},"B":{"ht":"","rate":"16.00","total":"","vat":""}},"change":"0.00",'
    '"paid":"","payments":[{"amount":"","method":"E"}],"specific_tax":"0.00","total":"","usd_equivalent":null,'
    '"vat":""},"security":{"authority_id":"DC-","code":"","counters":{"label":" FV","total":1,"type":1},'
    '"fiscal_number":1,"qr_payload":"RDCSTL01;DC-","signature":"","timestamp":"T+01:00"},'
    '"chain":{"hash":"","prev_hash":""}}'
).encode("utf-8")
_LEVEL = 6


class UnreadableBody(ValueError):
    """A stored body that does not decode (damaged or altered on disk)."""


def pack(text: str) -> bytes:
    """The stored form of an invoice's JSON text."""
    packer = zlib.compressobj(_LEVEL, zlib.DEFLATED, -15, 9, zlib.Z_DEFAULT_STRATEGY, _DICTIONARY_V1)
    return bytes((_FORMAT_V1,)) + packer.compress(text.encode("utf-8")) + packer.flush()


def unpack(value: str | bytes) -> str:
    """The JSON text of a stored body, whichever form it was stored in."""
    if isinstance(value, str):
        return value
    try:
        return unpack_utf8(value).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UnreadableBody(f"the stored body does not decode ({exc})") from None


def unpack_utf8(value: bytes) -> bytes:
    """The JSON text of a compressed stored body as UTF-8 bytes, not decoded: for a reader that
    hashes the bytes as stored (`stalela verify`)."""
    if not value or value[0] != _FORMAT_V1:
        raise UnreadableBody(f"unknown stored body format {value[:1].hex() or 'empty'}")
    unpacker = zlib.decompressobj(-15, _DICTIONARY_V1)
    try:
        data = unpacker.decompress(value[1:]) + unpacker.flush()
    except zlib.error as exc:
        raise UnreadableBody(f"the stored body does not decode ({exc})") from None
    if not unpacker.eof or unpacker.unused_data:
        raise UnreadableBody("the stored body is truncated or has trailing bytes")
    return data
