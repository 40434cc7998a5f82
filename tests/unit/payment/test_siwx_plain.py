"""The plain road of a sign-in (`read_plain`, `Sessions._passes`): a proof in the SDK
clients' shape is read and checked without pydantic or `urlparse`, and must get exactly the
answer the SDK's road (`parse_siwx_header`, `validate_siwx_message`) gives it. A header
with one unknown key is read the same by the SDK's parser but never by `read_plain`: the
same proof sent both ways compares the two roads."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from eth_account import Account
from eth_account.messages import encode_defunct
from hypothesis import given, settings
from hypothesis import strategies as st
from x402.extensions.sign_in_with_x import (
    create_siwx_payload,
    encode_siwx_header,
    parse_siwx_header,
)
from x402.mechanisms.evm import EthAccountSigner

from gateway.errors import SignInRefused
from gateway.payment import sessions as sessions_module
from gateway.payment.sessions import Sessions
from gateway.payment.siwx_proof import eip4361_message, read_plain
from gateway.store.sessions import MemorySessions

from .test_sessions import CONFIG, PUBLIC, REPORTS, challenge, signed

SETTINGS_ = __import__("gateway.config", fromlist=["loads"]).loads(CONFIG)


def fresh() -> Sessions:
    return Sessions(SETTINGS_, MemorySessions())


def rewritten(header: str, **changes: Any) -> str:
    """The header's JSON with keys changed (None: removed), base64 again."""
    fields = json.loads(base64.b64decode(header))
    for key, value in changes.items():
        if value is None:
            fields.pop(key, None)
        else:
            fields[key] = value
    return base64.b64encode(json.dumps(fields).encode()).decode()


def resigned(account: Any, header: str, **changes: Any) -> str:
    """The header with fields changed, signed again by `account` (what the SDK's client
    will not sign: another domain, odd timestamps)."""
    changed = rewritten(header, **changes)
    payload = parse_siwx_header(changed)
    text = eip4361_message(payload, payload.chain_id.split(":")[1])
    signature = Account.sign_message(encode_defunct(text=text), account.key).signature
    return rewritten(changed, signature="0x" + bytes(signature).hex())


def sdk_road(header: str) -> str:
    return rewritten(header, unknownKey="the SDK ignores it, read_plain does not")


async def answer(sessions: Sessions, path: str, header: str) -> str:
    try:
        return await sessions.sign_in(REPORTS, path, header)
    except SignInRefused as refused:
        return f"refused: {refused.reason}"


def iso(delta: timedelta, *, naive: bool = False) -> str:
    instant = datetime.now(UTC) + delta
    text = instant.isoformat()
    return text.replace("+00:00", "") if naive else text.replace("+00:00", "Z")


# (changes, request path); each signed by the wallet, then sent both ways.
CASES: list[tuple[dict[str, Any], str]] = [
    ({}, "/reports/a"),
    ({}, "/reports/b"),
    ({"uri": PUBLIC + "/reports/a?page=2"}, "/reports/a"),
    ({"uri": PUBLIC + "/reports/a?page=2#top"}, "/reports/a"),
    ({"uri": PUBLIC + "/reports/a#top"}, "/reports/a"),
    ({"uri": PUBLIC + "/reports/a;v=1"}, "/reports/a;v=1"),
    ({"uri": PUBLIC + "/reports/a;v=1"}, "/reports/a"),
    ({"uri": PUBLIC + "/reports/a/"}, "/reports/a"),
    ({"uri": PUBLIC + "/reports"}, "/reports/a"),
    ({"uri": "HTTPS://api.example.com/reports/a"}, "/reports/a"),
    ({"uri": "https://api.example.com:443/reports/a"}, "/reports/a"),
    ({"uri": "http://api.example.com/reports/a"}, "/reports/a"),
    ({"uri": "https://evil.example/reports/a"}, "/reports/a"),
    ({"domain": "evil.example", "uri": "https://evil.example/reports/a"}, "/reports/a"),
    ({"domain": "evil.example"}, "/reports/a"),
    ({"chainId": "eip155:1"}, "/reports/a"),
    ({"chainId": "eip155:084532"}, "/reports/a"),
    ({"issuedAt": "2020-01-01T00:00:00Z"}, "/reports/a"),
    ({"issuedAt": iso(timedelta(minutes=-4))}, "/reports/a"),
    ({"issuedAt": iso(timedelta(minutes=-6))}, "/reports/a"),
    ({"issuedAt": iso(timedelta(minutes=2))}, "/reports/a"),
    ({"issuedAt": iso(timedelta(seconds=-5), naive=True)}, "/reports/a"),
    ({"issuedAt": "yesterday"}, "/reports/a"),
    ({"expirationTime": iso(timedelta(seconds=-1))}, "/reports/a"),
    ({"expirationTime": iso(timedelta(hours=1), naive=True)}, "/reports/a"),
    ({"expirationTime": "soon"}, "/reports/a"),
    ({"notBefore": iso(timedelta(minutes=1))}, "/reports/a"),
    ({"notBefore": iso(timedelta(minutes=-1))}, "/reports/a"),
    ({"notBefore": "later"}, "/reports/a"),
    ({"statement": None}, "/reports/a"),
    ({"requestId": "req-1", "resources": [PUBLIC + "/reports/z"]}, "/reports/a"),
]


@pytest.mark.parametrize(("changes", "path"), CASES)
async def test_both_roads_give_the_same_answer(changes: dict[str, Any], path: str) -> None:
    account = Account.create()
    plain_road, reference = fresh(), fresh()
    for sessions in (plain_road, reference):
        await sessions.paid(REPORTS, account.address)
    header = resigned(account, encode_siwx_header(await signed(plain_road, account)), **changes)
    got = await answer(plain_road, path, header)
    assert got == await answer(reference, path, sdk_road(header))
    # Replayed: refused the same way on both (spent on both, or refused before either).
    assert await answer(plain_road, path, header) == await answer(reference, path, sdk_road(header))


async def test_a_second_wallet_or_an_unpaid_one_is_refused_on_both_roads() -> None:
    payer, other = Account.create(), Account.create()
    for road in (lambda h: h, sdk_road):
        sessions = fresh()
        await sessions.paid(REPORTS, payer.address)
        theirs = encode_siwx_header(await signed(sessions, other))
        forged = rewritten(theirs, address=payer.address)
        assert await answer(sessions, "/reports/a", road(forged)) == (
            "refused: invalid_siwx_signature"
        )
        assert await answer(sessions, "/reports/a", road(theirs)) == "refused: siwx_not_paid"
        mine = encode_siwx_header(await signed(sessions, payer))
        assert await answer(sessions, "/reports/a", road(mine)) == payer.address
        assert await answer(sessions, "/reports/a", road(mine)) == "refused: siwx_nonce_used"


async def test_a_refused_plain_proof_spends_no_nonce() -> None:
    sessions, payer = fresh(), Account.create()
    await sessions.paid(REPORTS, payer.address)
    info = await challenge(sessions)
    url = PUBLIC + "/reports/a"
    proof = encode_siwx_header(await create_siwx_payload(info, EthAccountSigner(payer), url))
    assert await answer(sessions, "/reports/b", proof) == "refused: invalid_siwx_uri_mismatch"
    assert await answer(sessions, "/reports/a", proof) == payer.address


async def test_a_plain_proof_never_reaches_the_sdks_parser(monkeypatch: pytest.MonkeyPatch) -> None:
    # What makes the plain road cheaper: the SDK's pydantic parse and urlparse are not run.
    sessions, payer = fresh(), Account.create()
    await sessions.paid(REPORTS, payer.address)
    header = encode_siwx_header(await signed(sessions, payer))

    def unused(*_: object) -> None:
        raise AssertionError("the SDK's road was taken")

    monkeypatch.setattr(sessions_module, "_parse", unused)
    assert await sessions.sign_in(REPORTS, "/reports/a", header) == payer.address
    with pytest.raises(AssertionError):
        await sessions.sign_in(REPORTS, "/reports/a", sdk_road(header))


# --- read_plain reads what the SDK's parser reads, or nothing -------------------------------

_TEXT = st.text(min_size=0, max_size=20)


@settings(max_examples=80, deadline=None)
@given(
    statement=st.none() | _TEXT,
    request_id=st.none() | _TEXT,
    expiration=st.none() | _TEXT,
    not_before=st.none() | _TEXT,
    resources=st.none() | st.lists(_TEXT, max_size=2),
    scheme=st.sampled_from([None, "eip191", "eip1271", "siws"]),
)
def test_read_plain_reads_as_the_sdk_reads(
    statement: str | None,
    request_id: str | None,
    expiration: str | None,
    not_before: str | None,
    resources: list[str] | None,
    scheme: str | None,
) -> None:
    fields: dict[str, Any] = {
        "domain": "api.example.com",
        "address": "0x000000000000000000000000000000000000dEaD",
        "uri": PUBLIC + "/reports/a",
        "version": "1",
        "chainId": "eip155:84532",
        "type": "eip191",
        "nonce": "a1b2c3d4e5f6a7b8",
        "issuedAt": "2026-11-26T13:45:33Z",
        "statement": statement,
        "requestId": request_id,
        "expirationTime": expiration,
        "notBefore": not_before,
        "resources": resources,
        "signatureScheme": scheme,
        "signature": "0x" + "11" * 65,
    }
    header = base64.b64encode(json.dumps(fields).encode()).decode()
    sdk = parse_siwx_header(header)
    plain = read_plain(header)
    if scheme not in (None, "eip191"):
        assert plain is None
        return
    assert plain is not None
    for name in plain._fields:
        assert getattr(plain, name) == getattr(sdk, name), name


@pytest.mark.parametrize(
    "changes",
    [
        {"unknownKey": 1},
        {"chain_id": "eip155:84532", "chainId": None},
        {"chainId": 84532},
        {"statement": 7},
        {"resources": "https://x"},
        {"resources": [1]},
        {"type": "ed25519"},
        {"type": None},
        {"signature": None},
    ],
)
async def test_read_plain_leaves_anything_else_to_the_sdk(changes: dict[str, Any]) -> None:
    sessions = fresh()
    header = rewritten(encode_siwx_header(await signed(sessions, Account.create())), **changes)
    assert read_plain(header) is None


def test_read_plain_wants_canonical_base64_of_a_utf8_json_object() -> None:
    good = base64.b64encode(b'{"a": 1}').decode()
    assert read_plain(good) is None  # an object, but not a proof
    for header in ("", "!!!", good.rstrip("="), " " + good, "W10=", "bnVsbA=="):
        assert read_plain(header) is None
    utf16 = base64.b64encode(json.dumps({"domain": "x"}).encode("utf-16")).decode()
    assert read_plain(utf16) is None
