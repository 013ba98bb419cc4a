"""Canonicalization: our fast path must be byte-identical to the rfc8785 reference."""
from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from fiscal.canonical import canonical_bytes, reference_canonical_bytes
from fiscal.models import InvoiceRequest
from tests.support import invoice

json_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=20)
ascii_keys = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=8)
scalars = st.one_of(st.none(), st.booleans(), json_text, st.integers(-(2**53) + 1, 2**53 - 1))
documents = st.recursive(scalars, lambda children: st.one_of(
    st.lists(children, max_size=5), st.dictionaries(ascii_keys, children, max_size=5)), max_leaves=30)


@settings(max_examples=400, deadline=None)
@given(documents)
def test_fast_path_equals_rfc8785(doc):
    assert canonical_bytes(doc if isinstance(doc, (dict, list)) else [doc]) == \
        reference_canonical_bytes(doc if isinstance(doc, (dict, list)) else [doc])


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(st.text(max_size=4), st.floats(allow_nan=False, allow_infinity=False), max_size=4))
def test_non_plain_data_goes_to_the_reference(doc):
    # Floats and non-ASCII keys are outside the fast path; the answer is still RFC 8785's.
    assert canonical_bytes(doc) == reference_canonical_bytes(doc)


def test_model_canonical_form_is_stable_and_key_order_independent():
    req = InvoiceRequest.model_validate(invoice("R-1", n_items=3))
    reordered = InvoiceRequest.model_validate(dict(reversed(list(invoice("R-1", n_items=3).items()))))
    assert canonical_bytes(req) == canonical_bytes(reordered)
    assert b'"unit_price":"100.50"' in canonical_bytes(req)


def test_control_characters_escape_like_rfc8785():
    doc = {"s": "a\u0001b\u001fc\n\t\"\\/\u007f\u2028é😀"}
    assert canonical_bytes(doc) == reference_canonical_bytes(doc)


# --- compose(): the seal path assembles canonical text from fragments encoded once ---------

objects = st.dictionaries(ascii_keys, documents, max_size=8)


@settings(max_examples=300, deadline=None)
@given(objects, st.data())
def test_compose_with_fragments_equals_rfc8785(doc, data):
    from fiscal.canonical import Fragments, compose
    frags = Fragments(doc)
    # Replace some values after the fragments were made: a stale fragment must never be used.
    for key in data.draw(st.lists(st.sampled_from(sorted(doc)), max_size=3, unique=True) if doc else st.just([])):
        doc[key] = data.draw(documents)
    assert compose(doc, frags).encode() == reference_canonical_bytes(doc)
    assert compose(doc).encode() == reference_canonical_bytes(doc)
    # Unsorted: the same members in the object's own order, still valid JSON of the same value.
    import json
    assert json.loads(compose(doc, frags, sort=False)) == doc
    assert list(json.loads(compose(doc, frags, sort=False))) == list(doc)


def test_fragment_of_a_replaced_value_is_not_used():
    from fiscal.canonical import Fragments, compose
    doc = {"items": [{"b": 1, "a": 2}], "x": "y"}
    frags = Fragments(doc)
    doc["items"] = [{"a": 3}]  # same key, another object
    assert compose(doc, frags) == '{"items":[{"a":3}],"x":"y"}'


@settings(max_examples=300, deadline=None)
@given(documents)
def test_loads_plain_agrees_with_the_walk(doc):
    import json
    from fiscal.canonical import is_plain, loads_plain
    text = json.dumps(doc, ensure_ascii=False)
    parsed, plain = loads_plain(text)
    assert plain == is_plain(json.loads(text))
    assert parsed == json.loads(text)


def test_loads_plain_refuses_what_the_fast_path_cannot_write():
    from fiscal.canonical import loads_plain
    assert loads_plain('{"a": 1.5}') == ({"a": 1.5}, False)
    assert loads_plain('{"a": 9007199254740993}') == ({"a": 9007199254740993}, False)
    assert loads_plain('{"é": "x"}') == ({"é": "x"}, False)
    assert loads_plain('{"a": "é", "b": [1, null, true]}') == ({"a": "é", "b": [1, None, True]}, True)


def test_what_orjson_refuses_is_written_or_refused_as_json_did():
    """The fast path is orjson, with json for what orjson refuses: the text, or the error, is the
    one the json encoder gave before orjson was used."""
    from datetime import datetime
    from fiscal.canonical import _dumps, _json_dumps

    for value in ({"k": 2**70, "l": [2**64]}, {1: "a"}):  # past 64 bits; a non-string key
        assert _dumps(value) == _json_dumps(value)
    with pytest.raises(TypeError):  # never written in a form of orjson's own
        _dumps({"when": datetime(2026, 1, 1)})
    with pytest.raises(UnicodeEncodeError):  # a lone surrogate has no UTF-8 bytes to hash
        canonical_bytes({"s": "\ud800"})
