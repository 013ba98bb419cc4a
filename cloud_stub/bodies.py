"""Request bodies of the cloud API: their models (strict: unknown fields and wrong types are
refused), their decoding, and the cutting of a large reconcile body into chunks for the verifier."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal, TypeVar

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StrictInt, ValidationError

from fiscal.runtime.problems import validation_errors
from fiscal.credential import BlockClosure
from fiscal.models import InvoiceRequest

from .errors import CloudError, Invalid

Name = Annotated[str, Field(min_length=1, max_length=128)]
Short = Annotated[str, Field(min_length=1, max_length=64)]
RequestId = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[\x21-\x7E]+$")]


B = TypeVar("B", bound=BaseModel)


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class EnrollBody(Body):
    token: Annotated[str, Field(min_length=1, max_length=256)]
    agent_public_key: Annotated[str, Field(min_length=1, max_length=128)]
    label: Short = "agent"


class CredentialBody(Body):
    closure: BlockClosure | None = None
    block_size: StrictInt | None = None
    request_id: RequestId | None = None


class SealBody(Body):
    invoice: InvoiceRequest
    isf: Short | None = None
    id: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")] | None = None
    # The agent's deadline: the cloud never commits this seal after it (see docs/cloud-api.md).
    deadline: AwareDatetime | None = None


class SupersededBody(Body):
    """The agent sealed a sale with another signer after its online seal got no answer past the
    deadline: which invoice it sealed instead."""

    authority_id: Annotated[str, Field(min_length=1, max_length=64)]
    fiscal_number: StrictInt


class ReconcileBody(Body):
    invoices: Annotated[list[Any], Field(min_length=1)]


class DeviceBody(Body):
    mid: Annotated[str, Field(min_length=1, max_length=32)]
    nif: Annotated[str, Field(min_length=1, max_length=32)]
    status: Literal["active", "suspended", "retired"] = "active"
    firmware: dict[Short, Short] = {}
    outlet_id: Short | None = None  # the admin names it; a provisioning token implies its own outlet


class Taxpayer(Body):
    address: Name | None = None
    rccm: Short | None = None
    phone: Short | None = None
    email: Name | None = None
    activity: Name | None = None
    regime: Short | None = None


class MerchantBody(Body):
    nif: Annotated[str, Field(min_length=1, max_length=32)]
    name: Name
    taxpayer: Taxpayer = Taxpayer()


class OutletBody(Body):
    id: Annotated[str, Field(min_length=1, max_length=40)]
    merchant_nif: Annotated[str, Field(min_length=1, max_length=32)]
    name: Name
    time_zone: Literal["Africa/Kinshasa", "Africa/Lubumbashi"] = "Africa/Kinshasa"
    isf: Short | None = None


class TokenBody(Body):
    # [0-9], not \d: the pattern is a Rust regex, whose \d also takes other scripts' digits.
    ttl: Annotated[str, Field(pattern=r"^[0-9]{1,6}[smhd]$")] | None = None


class RevokeBody(Body):
    reason: Name = "revoked by an operator"
    effective_at: AwareDatetime | None = None


# -- decoding --------------------------------------------------------------------------------

# A `\uD800`-`\uDFFF` escape: without one, no string of the body holds a surrogate (JSON text is
# UTF-8 here), so the full check below runs only on bodies that have one (paired or not).
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]").search


def surrogate_escape(raw: bytes) -> re.Match | None:
    # No backslash at all (what agents send): memchr finds that out ~40 times faster than the
    # expression scans 4 MB, and the scan runs while every verifier worker waits for its chunk.
    return None if raw.find(b"\\") == -1 else _SURROGATE_ESCAPE(raw)


def _has_lone_surrogate(data: Any) -> bool:
    try:
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def decode_json(raw: bytes) -> Any:
    """The JSON value of a request body (empty body: `{}`); a clean 400 for anything unreadable."""
    try:
        return json.loads(raw.decode("utf-8")) if raw.strip() else {}
    except UnicodeDecodeError:
        raise CloudError("malformed_json", "the body is not valid UTF-8") from None
    except json.JSONDecodeError as exc:
        raise CloudError("malformed_json", f"the body is not valid JSON: {exc.msg} at position {exc.pos}") from None
    except ValueError:  # an integer of more digits than Python converts (sys.get_int_max_str_digits)
        raise CloudError("malformed_json", "the body holds a number too long to read") from None
    except RecursionError:
        raise CloudError("malformed_json", "the body is nested too deeply") from None


def parse_body(raw: bytes, model: type[B]) -> B:
    """A request body validated against its model: CloudError 400 / Invalid 422 otherwise."""
    data = decode_json(raw)
    if not isinstance(data, dict):
        raise CloudError("malformed_json", "the body must be a JSON object")
    if surrogate_escape(raw) is not None and _has_lone_surrogate(data):
        # JSON escapes can encode half a UTF-16 pair, which no UTF-8 answer or hash can carry.
        raise CloudError("malformed_json", "the body contains an unpaired UTF-16 surrogate escape")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise Invalid("validation", "the request does not match the contract", errors=validation_errors(exc)) from None


def batch_too_large(max_batch: int) -> Invalid:
    return Invalid("batch_too_large", f"send at most {max_batch} invoices per batch")


def reconcile_invoices(raw: bytes, max_batch: int) -> list[Any]:
    """The invoices of a `POST /v1/reconcile` body, parsed and validated in full."""
    invoices = parse_body(raw, ReconcileBody).invoices
    if len(invoices) > max_batch:
        raise batch_too_large(max_batch)
    return invoices


# -- splitting a reconcile body without parsing it -------------------------------------------

_WS = rb"[ \t\n\r]*"  # JSON's whitespace
_PREFIX = re.compile(_WS + rb'\{' + _WS + rb'"invoices"' + _WS + rb':' + _WS + rb'\[')
_FIRST_KEY = re.compile(_WS + rb'\{' + _WS + rb'"([A-Za-z0-9_]{1,64})"' + _WS + rb':')
_AUTHORITY = re.compile(rb'"authority_id"' + _WS + rb':' + _WS + rb'"([^"\\]{1,128})"')
_SPACE = frozenset(b" \t\n\r")


@dataclass(frozen=True)
class Upload:
    """A reconcile body cut into chunks of whole invoices, for the verifier's workers.

    Each chunk is a JSON array text (`[` + some of the body's invoices, as sent + `]`); the body
    is `{"invoices": [` + the chunks' contents joined by commas + `]}`. Whoever parses the chunks
    proves the cuts right: if every chunk parses as an array, the body is valid JSON and its
    invoices are the chunks' invoices in order (JSON has one parse, so a comma that separates
    two arrays' worth of values separates them in the whole too). A cut inside an invoice
    makes a chunk unreadable, and the caller then parses the body whole.
    """

    chunks: list[bytes]
    count: int  # invoices, as counted by the boundaries found (the chunks' parse is the truth)
    credential_ids: frozenset[str]  # authority ids written in the body: whose signer keys to read


def split_upload(raw: bytes, parts: int, min_count: int, max_count: int) -> Upload | None:
    """Cut a reconcile body into about `parts` chunks, or None when it is not worth it or not
    laid out as agents send it (then the body is parsed whole, with the usual error answers).

    Boundaries are found in the bytes at C speed (`bytes.find`, or a regular expression when
    the body has whitespace), not by parsing: between two invoices is `},{"<key>":` where <key>
    is the first key of the first invoice (agents write `id` first). The same text can occur
    inside an invoice; such a cut is caught as above.
    """
    if surrogate_escape(raw) is not None:  # the lone surrogate check needs the parsed body
        return None
    prefix = _PREFIX.match(raw)
    if prefix is None:
        return None
    start = prefix.end()
    end = len(raw)  # then back over `]` `}` and whitespace: `end` is the index of the array's `]`
    while end and raw[end - 1] in _SPACE:
        end -= 1
    if not end or raw[end - 1] != ord("}"):
        return None
    end -= 1
    while end and raw[end - 1] in _SPACE:
        end -= 1
    if end <= start or raw[end - 1] != ord("]"):
        return None
    end -= 1
    first = _FIRST_KEY.match(raw, start, end)
    if first is None:
        return None
    commas = _boundaries(raw, start, end, first.group(1))
    count = len(commas) + 1
    if not min_count <= count <= max_count:
        return None
    pieces = max(1, min(parts, count))
    cuts = [commas[j * count // pieces - 1] for j in range(1, pieces)]
    bounds = [start - 1, *cuts, end]  # each chunk lies between two of these (exclusive)
    chunks = [b"[" + raw[a + 1:b] + b"]" for a, b in zip(bounds, bounds[1:])]
    ids = set()
    for found in _authorities(raw, start, end):
        try:
            ids.add(found.decode("utf-8"))
        except UnicodeDecodeError:  # not an id the ledger can hold; the parse will say why
            pass
    return Upload(chunks, count, frozenset(ids))


def _boundaries(raw: bytes, start: int, end: int, key: bytes) -> list[int]:
    """Offsets of the commas that may separate two invoices (see split_upload)."""
    # The compact layout agents send, found with bytes.find (memchr speed); the general one
    # (any JSON whitespace around the punctuation) with a regular expression.
    compact = b'},{"' + key + b'":'
    commas = []
    at = raw.find(compact, start, end)
    while at != -1:
        commas.append(at + 1)
        at = raw.find(compact, at + 3, end)
    if commas:
        return commas
    spaced = re.compile(rb'\}' + _WS + rb'(,)' + _WS + rb'\{' + _WS + rb'"' + key + rb'"' + _WS + rb':')
    return [m.start(1) for m in spaced.finditer(raw, start, end)]


def _authorities(raw: bytes, start: int, end: int) -> set[bytes]:
    """The `authority_id` values written in the body (a hint: an odd spelling is simply missed)."""
    needle = b'"authority_id":"'
    found = set()
    at = raw.find(needle, start, end)
    while at != -1:
        value_start = at + len(needle)
        value_end = raw.find(b'"', value_start, min(end, value_start + 129))
        if value_end == -1:
            value_end = value_start
        else:
            found.add(raw[value_start:value_end])
        at = raw.find(needle, value_end, end)
    if not found:
        found.update(_AUTHORITY.findall(raw, start, end))
    return found
