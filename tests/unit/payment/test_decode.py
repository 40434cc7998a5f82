from __future__ import annotations

import base64
import binascii
import json
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from x402.schemas import PaymentPayload
from x402.schemas.v1 import PaymentPayloadV1

from gateway.errors import MalformedPayment
from gateway.payment.decode import (
    MAX_INT_DIGITS,
    MAX_JSON_DEPTH,
    DecodedPayment,
    _b64decode,
    _loads,
    decode_payment,
)
from tests.unit.wire_helpers import b64json, headers, v1_dict, v2_dict

LIMIT = 16384


def _reason(*pairs: tuple[str, str], limit: int = LIMIT) -> str:
    with pytest.raises(MalformedPayment) as caught:
        decode_payment(headers(*pairs), limit)
    assert caught.value.status == 400
    return caught.value.reason


def _v2(value: str) -> str:
    return _reason(("PAYMENT-SIGNATURE", value))


def _b64(text: str | bytes) -> str:
    raw = text.encode() if isinstance(text, str) else text
    return base64.b64encode(raw).decode()


def test_no_payment_header_is_no_payment() -> None:
    assert decode_payment(headers(("Accept", "*/*")), LIMIT) is None
    assert decode_payment(headers(("PAYMENT-SIGNATURE", "  ")), LIMIT) is None


def test_v2_payment_decodes_to_the_sdk_model() -> None:
    data = v2_dict()
    got = decode_payment(headers(("payment-signature", b64json(data))), LIMIT)
    assert got == DecodedPayment(2, PaymentPayload.model_validate(data), "PAYMENT-SIGNATURE")


def test_v1_payment_decodes_to_the_sdk_model() -> None:
    data = v1_dict()
    got = decode_payment(headers(("X-Payment", b64json(data))), LIMIT)
    assert got == DecodedPayment(1, PaymentPayloadV1.model_validate(data), "X-PAYMENT")


def test_a_plain_mapping_works_with_canonical_names() -> None:
    got = decode_payment({"PAYMENT-SIGNATURE": b64json(v2_dict())}, LIMIT)
    assert got is not None
    assert got.version == 2


def test_urlsafe_and_unpadded_base64_are_read() -> None:
    raw = json.dumps(v2_dict(resource={"url": "http://x/?a=>>>???"})).encode()
    urlsafe = base64.urlsafe_b64encode(raw).decode().rstrip("=")
    assert "-" in urlsafe or "_" in urlsafe  # the point of the test
    got = decode_payment(headers(("PAYMENT-SIGNATURE", urlsafe)), LIMIT)
    assert got is not None
    assert got.payload == PaymentPayload.model_validate(json.loads(raw))


@pytest.mark.parametrize(
    "pairs",
    [
        (("PAYMENT-SIGNATURE", b64json(v2_dict())), ("X-PAYMENT", b64json(v1_dict()))),
        (("PAYMENT-SIGNATURE", b64json(v2_dict())), ("payment-signature", b64json(v2_dict()))),
        (("X-PAYMENT", b64json(v1_dict())), ("X-PAYMENT", b64json(v1_dict()))),
    ],
)
def test_several_payment_headers_conflict(pairs: tuple[tuple[str, str], ...]) -> None:
    assert _reason(*pairs) == "conflicting_payment_headers"


def test_size_is_bounded_before_decoding() -> None:
    value = b64json(v2_dict())
    assert decode_payment(headers(("PAYMENT-SIGNATURE", value)), len(value)) is not None
    assert _reason(("PAYMENT-SIGNATURE", value), limit=len(value) - 1) == (
        "invalid_payment_header_size"
    )
    assert _reason(("X-PAYMENT", "A" * (LIMIT + 1))) == "invalid_payment_header_size"


@pytest.mark.parametrize(
    "value",
    ["!!!!", "eyJ4Ijox fQ==", "é" * 8, "ab+c-d__", "abcde", "ab=c", "====", "YQ===", "\x00AAA"],
)
def test_not_base64(value: str) -> None:
    assert _v2(value) == "invalid_base64"


def test_not_utf8() -> None:
    assert _v2(_b64(b'{"x402Version": 2, "a": "\xff\xfe"}')) == "invalid_utf8"


@pytest.mark.parametrize(
    "text",
    [
        "{",
        "{'x402Version': 2}",
        '{"x402Version": NaN}',
        '{"x402Version": Infinity}',
        '{"x402Version": 2} trailing',
        '{"x402Version": ' + "9" * 5000 + "}",
        '{"x402Version": -' + "9" * 80 + "}",
        "\ufeff{}",
        " ",
    ],
)
def test_not_json(text: str) -> None:
    assert _v2(_b64(text)) == "invalid_json"


def _nested(depth: int) -> str:
    return '{"x402Version": 2, "deep": ' + "[" * depth + "]" * depth + "}"


def test_nesting_is_bounded_before_json_loads() -> None:
    # the object itself is one level
    assert _v2(_b64(_nested(MAX_JSON_DEPTH))) == "invalid_json"
    assert _v2(_b64("[" * 100_000)) in {"invalid_json", "invalid_payment_header_size"}
    assert _reason(("PAYMENT-SIGNATURE", _b64("[" * 10_000)), limit=10**6) == "invalid_json"
    # within the bound the JSON parses, and the schema decides
    assert _v2(_b64(_nested(MAX_JSON_DEPTH - 1))) == "invalid_payload"


def test_brackets_inside_strings_do_not_count_as_nesting() -> None:
    data = v2_dict(resource={"url": "http://x/" + "[{" * 200 + '\\"' + "]}" * 3})
    data["resource"]["description"] = '[[[[\\"{{{{'
    assert decode_payment(headers(("PAYMENT-SIGNATURE", b64json(data))), LIMIT) is not None


@pytest.mark.parametrize("value", [[], "x402", 2, None, True, 1.5])
def test_must_be_a_json_object(value: Any) -> None:
    assert _v2(b64json(value)) == "invalid_payload_type"


@pytest.mark.parametrize(
    ("header", "version"),
    [
        ("PAYMENT-SIGNATURE", None),
        ("PAYMENT-SIGNATURE", 3),
        ("PAYMENT-SIGNATURE", "2"),
        ("PAYMENT-SIGNATURE", True),
        ("PAYMENT-SIGNATURE", 2.0),
        ("PAYMENT-SIGNATURE", 1),
        ("X-PAYMENT", 2),
        ("X-PAYMENT", 0),
        ("X-PAYMENT", 10**70),
    ],
)
def test_x402_version_must_fit_the_header(header: str, version: Any) -> None:
    data = v2_dict() if header == "PAYMENT-SIGNATURE" else v1_dict()
    if version is None:
        del data["x402Version"]
    else:
        data["x402Version"] = version
    assert _reason((header, b64json(data))) == "invalid_x402_version"


@pytest.mark.parametrize(
    ("header", "data", "field"),
    [
        ("PAYMENT-SIGNATURE", {k: v for k, v in v2_dict().items() if k != "accepted"}, "accepted"),
        ("PAYMENT-SIGNATURE", {**v2_dict(), "payload": "0xdead"}, "payload"),
        ("PAYMENT-SIGNATURE", v2_dict(amount=1000), "accepted.amount"),
        ("PAYMENT-SIGNATURE", v2_dict(maxTimeoutSeconds="soon"), "accepted.maxTimeoutSeconds"),
        ("X-PAYMENT", {k: v for k, v in v1_dict().items() if k != "scheme"}, "scheme"),
        ("X-PAYMENT", {**v1_dict(), "network": ["base"]}, "network"),
    ],
)
def test_schema_errors_name_the_field(header: str, data: dict[str, Any], field: str) -> None:
    with pytest.raises(MalformedPayment) as caught:
        decode_payment(headers((header, b64json(data))), LIMIT)
    assert caught.value.reason == "invalid_payload"
    assert f"{header}: {field}:" in caught.value.detail


def test_schema_error_detail_does_not_echo_the_input() -> None:
    data = {**v2_dict(), "payload": "<script>" + "x" * 5000}
    with pytest.raises(MalformedPayment) as caught:
        decode_payment(headers(("PAYMENT-SIGNATURE", b64json(data))), LIMIT)
    assert "<script>" not in caught.value.detail
    assert len(caught.value.detail) <= 300


# --- fuzzing: whatever arrives, the answer is a payment, nothing, or MalformedPayment ---------

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=30,
)
_payload_like = st.fixed_dictionaries(
    {"x402Version": st.sampled_from([1, 2, 0, True, "2", None, 2**64])},
    optional={
        "accepted": _json | st.just(v2_dict()["accepted"]),
        "payload": _json,
        "scheme": _json,
        "network": _json,
        "resource": _json,
        "extensions": _json,
    },
)


def _outcome(*pairs: tuple[str, str]) -> DecodedPayment | MalformedPayment | None:
    try:
        return decode_payment(headers(*pairs), 4096)
    except MalformedPayment as exc:
        assert exc.status == 400
        assert exc.reason.startswith("invalid_") or exc.reason == "conflicting_payment_headers"
        return exc


@settings(max_examples=300, deadline=None)
@given(name=st.sampled_from(["PAYMENT-SIGNATURE", "X-PAYMENT"]), value=st.text(max_size=300))
def test_fuzz_any_text(name: str, value: str) -> None:
    _outcome((name, value))


@settings(max_examples=300, deadline=None)
@given(name=st.sampled_from(["PAYMENT-SIGNATURE", "X-PAYMENT"]), raw=st.binary(max_size=400))
def test_fuzz_any_bytes_in_base64(name: str, raw: bytes) -> None:
    _outcome((name, base64.b64encode(raw).decode()))


@settings(max_examples=300, deadline=None)
@given(name=st.sampled_from(["PAYMENT-SIGNATURE", "X-PAYMENT"]), value=_json | _payload_like)
def test_fuzz_any_json(name: str, value: Any) -> None:
    _outcome((name, b64json(value)))


@settings(max_examples=100, deadline=None)
@given(depth=st.integers(min_value=0, max_value=2000), opener=st.sampled_from(["[", '{"a":']))
def test_fuzz_nesting(depth: int, opener: str) -> None:
    closer = "]" if opener == "[" else "}"
    text = '{"x402Version": 2, "payload": ' + opener * depth + "1" + closer * depth + "}"
    got = _outcome(("PAYMENT-SIGNATURE", _b64(text)))
    if depth >= MAX_JSON_DEPTH:
        assert isinstance(got, MalformedPayment)
        assert got.reason in {"invalid_json", "invalid_payment_header_size"}


def _reference_b64decode(value: str, name: str) -> bytes | str:
    """The checks `_b64decode` makes, one after the other: its bytes, or its message."""
    try:
        raw = value.strip().encode("ascii")
    except UnicodeEncodeError:
        return f"{name} is not base64: it has non-ASCII characters"
    if b"-" in raw or b"_" in raw:
        if b"+" in raw or b"/" in raw:
            return f"{name} mixes the standard and URL-safe base64 alphabets"
        raw = raw.translate(bytes.maketrans(b"-_", b"+/"))
    if not re.fullmatch(rb"[A-Za-z0-9+/]*={0,2}", raw):
        return f"{name} is not base64: unexpected characters"
    unpadded = raw.rstrip(b"=")
    if len(unpadded) % 4 == 1:
        return f"{name} is not base64: truncated"
    try:
        return base64.b64decode(unpadded + b"=" * (-len(unpadded) % 4), validate=True)
    except (binascii.Error, ValueError) as exc:
        return f"{name} is not base64: {exc}"


@settings(max_examples=500)
@given(st.text(alphabet="AQgw+/-_=\n é", max_size=14))
def test_base64_fast_pass_decides_as_the_step_by_step_checks(value: str) -> None:
    expected = _reference_b64decode(value, "X")
    try:
        got: bytes | str = _b64decode(value, "X")
    except MalformedPayment as exc:
        got = exc.detail
    assert got == expected


# --- integers at the digit bound --------------------------------------------------------


def _verdict(text: str) -> str:
    try:
        _loads(text, "PAYMENT-SIGNATURE")
    except MalformedPayment:
        return "refused"
    return "ok"


@pytest.mark.parametrize(
    ("text", "verdict"),
    [
        ('{"a": ' + "9" * MAX_INT_DIGITS + "}", "ok"),
        ('{"a": ' + "9" * (MAX_INT_DIGITS + 1) + "}", "refused"),
        ('{"a": -' + "9" * (MAX_INT_DIGITS + 1) + "}", "refused"),
        ('{"a": "' + "9" * (MAX_INT_DIGITS + 5) + '"}', "ok"),
        ('{"a": 1.' + "9" * (MAX_INT_DIGITS + 5) + "}", "ok"),
    ],
)
def test_long_integers_at_the_digit_bound(text: str, verdict: str) -> None:
    assert _verdict(text) == verdict


# --- the JSON scan (equivalence with `JSONDecoder.decode`) -------------------------------

_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**90), max_value=10**90)
    | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=12,
)
_AROUND = st.sampled_from(["", " ", "\n", "\t ", "x", "}", "]", ",1", "{}", '"'])


def _decoded(text: str) -> Any:
    """What `JSONDecoder.decode` with the gateway's hooks says of `text`."""
    from gateway.payment import decode

    try:
        return ("ok", decode._DECODER.decode(text))
    except decode._NumberError as exc:
        return ("number", str(exc))
    except ValueError as exc:
        return ("not json", str(exc))


def _read(text: str) -> Any:
    try:
        return ("ok", _loads(text, "PAYMENT-SIGNATURE"))
    except MalformedPayment as exc:
        return ("refused", str(exc))


@settings(max_examples=400, deadline=None)
@given(_JSON, _AROUND, _AROUND, st.integers(min_value=0, max_value=3))
def test_loads_reads_as_json_decode(value: Any, before: str, after: str, cut: int) -> None:
    """The direct scan gives `decode`'s value, and a text it cannot take (whitespace around,
    extra data, a cut or broken text, an integer too long) `decode`'s own refusal."""
    text = before + json.dumps(value) + after
    text = text[: len(text) - cut]
    got, expected = _read(text), _decoded(text)
    assert (got[0] == "ok") == (expected[0] == "ok")
    if got[0] == "ok":
        assert got == expected
    else:
        assert expected[1] in got[1]  # the message `_fail` wraps
