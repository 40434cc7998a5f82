"""Reading a payment header: untrusted bytes in, an SDK `PaymentPayload` out, or a precise 400.

The SDK's `decode_payment_signature_header` is not used: it lets any exception through and
parses unbounded input. Here every step is bounded before it runs (size before base64, nesting
depth and number length before `json.loads`: importing the SDK's py_ecc raises the recursion
limit, so deep JSON would not stop at RecursionError), and each failure has its own reason.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NoReturn

import pydantic
from multidict import CIMultiDict, CIMultiDictProxy
from x402.http.constants import PAYMENT_SIGNATURE_HEADER, X_PAYMENT_HEADER
from x402.schemas import PaymentPayload
from x402.schemas.v1 import PaymentPayloadV1

from gateway.errors import MalformedPayment

MAX_JSON_DEPTH = 32
MAX_INT_DIGITS = 78  # a uint256 has 78 decimal digits; nothing on the wire needs more

# Standard or URL-safe alphabet (not both), padding optional.
_B64_STD = re.compile(rb"[A-Za-z0-9+/]*={0,2}")
_URLSAFE = bytes.maketrans(b"-_", b"+/")
# A JSON string (escapes included) or one bracket: strings are skipped whole, so brackets
# inside them do not count. Both alternatives are disjoint, so matching is linear.
_JSON_TOKENS = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]', re.DOTALL)

_VERSIONS = {PAYMENT_SIGNATURE_HEADER: 2, X_PAYMENT_HEADER: 1}


@dataclass(frozen=True, slots=True)
class DecodedPayment:
    """A payment header that parsed and validated against the SDK's model for its version."""

    version: int  # 1 or 2
    payload: PaymentPayload | PaymentPayloadV1
    header_name: str  # PAYMENT-SIGNATURE (v2) or X-PAYMENT (v1)


def _fail(reason: str, detail: str) -> NoReturn:
    raise MalformedPayment(detail, reason=reason)


def _values(headers: Mapping[str, str], name: str, multi: bool) -> list[str]:
    """`multi`: `headers` is a multidict (asked once by the caller, for both names)."""
    if multi:
        found: list[str] = headers.getall(name, ())  # type: ignore[attr-defined]
    else:
        one = headers.get(name)
        found = [] if one is None else [one]
    # An empty header is no payment, as in the SDK's server.
    return [v for v in found if v.strip()] if found else found


def _b64decode(value: str, name: str) -> bytes:
    try:
        raw = value.strip().encode("ascii")
    except UnicodeEncodeError:
        _fail("invalid_base64", f"{name} is not base64: it has non-ASCII characters")
    if b"-" in raw or b"_" in raw:
        if b"+" in raw or b"/" in raw:
            _fail("invalid_base64", f"{name} mixes the standard and URL-safe base64 alphabets")
        raw = raw.translate(_URLSAFE)
    unpadded = raw.rstrip(b"=")
    length = len(unpadded)
    if length % 4 != 1 and len(raw) - length <= 2:
        # Well-formed (every header a client sends): one strict pass in C decides it as the
        # checks below would; anything else goes through them for its own message.
        try:
            # `base64.b64decode(..., validate=True)` is this call behind two Python frames.
            return binascii.a2b_base64(unpadded + b"=" * (-length % 4), strict_mode=True)
        except (binascii.Error, ValueError):
            pass
    if not _B64_STD.fullmatch(raw):
        _fail("invalid_base64", f"{name} is not base64: unexpected characters")
    if len(unpadded) % 4 == 1:
        _fail("invalid_base64", f"{name} is not base64: truncated")
    padded = unpadded + b"=" * (-len(unpadded) % 4)
    try:
        return base64.b64decode(padded, validate=True)
    except (binascii.Error, ValueError) as exc:
        _fail("invalid_base64", f"{name} is not base64: {exc}")


def nesting_exceeds(text: str, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether JSON `text` nests arrays/objects deeper than `limit` (brackets inside strings
    do not count). Run before json.loads: py_ecc raises the recursion limit, so a deep
    document could otherwise exhaust the C stack."""
    # Nesting deeper than the limit needs more opening brackets than the limit: a count in C
    # settles every real payment (a handful of objects) without the scan below.
    if text.count("[") + text.count("{") <= limit:
        return False
    depth = 0
    for token in _JSON_TOKENS.finditer(text):
        char = token.group()
        if char in "[{":
            depth += 1
            if depth > limit:
                return True
        elif char in "]}":
            depth -= 1
    return False


def _check_depth(text: str, name: str) -> None:
    if nesting_exceeds(text):
        _fail("invalid_json", f"{name} JSON is nested deeper than {MAX_JSON_DEPTH} levels")


class _NumberError(ValueError):
    pass


def _parse_int(text: str) -> int:
    # A short one (every real payment's) is let through on its length alone.
    if len(text) > MAX_INT_DIGITS and len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise _NumberError(f"an integer longer than {MAX_INT_DIGITS} digits")
    return int(text)


def _parse_constant(text: str) -> Any:
    raise _NumberError(f"{text} is not JSON")


# Built once (json.loads with hooks builds a decoder per call); it keeps no state.
_DECODER = json.JSONDecoder(parse_int=_parse_int, parse_constant=_parse_constant)
# Its scanner (C), which `decode` runs from the text's first value (untyped in typeshed).
_SCAN: Callable[[str, int], tuple[Any, int]] = _DECODER.scan_once  # type: ignore[attr-defined]


def _loads(text: str, name: str) -> Any:
    if text.count("[") + text.count("{") > MAX_JSON_DEPTH:  # else not deep: no frames
        _check_depth(text, name)
    try:
        # `decode` is this scan behind two Python frames and two whitespace matches; a text
        # that is not one JSON value exactly from its first character to its last (leading
        # or trailing whitespace, an error) goes through `decode` for its own answer.
        try:
            value, end = _SCAN(text, 0)
        except StopIteration:
            end = -1
        return value if end == len(text) else _DECODER.decode(text)
    except _NumberError as exc:
        _fail("invalid_json", f"{name} JSON has {exc}")
    except (ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError
        _fail("invalid_json", f"{name} is not JSON: {exc}")


def _field_problem(exc: pydantic.ValidationError) -> str:
    first = exc.errors(include_url=False, include_input=False)[0]
    where = ".".join(str(part) for part in first["loc"]) or "payload"
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"{where}: {first['msg']}{more}"


def _validate(data: dict[str, Any], version: int, name: str) -> PaymentPayload | PaymentPayloadV1:
    model: type[PaymentPayload] | type[PaymentPayloadV1]
    model = PaymentPayload if version == 2 else PaymentPayloadV1
    try:
        return model.model_validate(data)
    except pydantic.ValidationError as exc:
        _fail("invalid_payload", f"{name}: {_field_problem(exc)}"[:300])


def decode_one(value: str, name: str, max_size: int) -> DecodedPayment:
    """Decode one header value of `name` (PAYMENT-SIGNATURE or X-PAYMENT)."""
    if len(value) > max_size:
        _fail("invalid_payment_header_size", f"{name} is larger than {max_size} bytes")
    raw = _b64decode(value, name)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        _fail("invalid_utf8", f"{name} does not decode to UTF-8 text")
    data = _loads(text, name)
    if not isinstance(data, dict):
        _fail("invalid_payload_type", f"{name} must be a JSON object, not {type(data).__name__}")
    version = data.get("x402Version")
    expected = _VERSIONS[name]
    # bool is an int in Python; `true` is not a version
    if type(version) is not int or version != expected:
        shown = repr(version)[:20]
        _fail("invalid_x402_version", f"{name} carries x402Version {expected}, not {shown}")
    return DecodedPayment(version, _validate(data, version, name), name)


def decode_payment(headers: Mapping[str, str], max_size: int) -> DecodedPayment | None:
    """The request's payment, None when it sent none, or `MalformedPayment` (400).

    `headers` is the request's case-insensitive multidict (a plain mapping must use the
    canonical names). Two payment headers (v1 and v2, or one repeated) are refused rather
    than guessed between."""
    multi = isinstance(headers, CIMultiDictProxy | CIMultiDict)
    v2 = _values(headers, PAYMENT_SIGNATURE_HEADER, multi)
    v1 = _values(headers, X_PAYMENT_HEADER, multi)
    if len(v2) + len(v1) > 1:
        _fail("conflicting_payment_headers", "send one payment header, not several")
    if v2:
        return decode_one(v2[0], PAYMENT_SIGNATURE_HEADER, max_size)
    if v1:
        return decode_one(v1[0], X_PAYMENT_HEADER, max_size)
    return None
