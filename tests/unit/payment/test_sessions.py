"""gateway.payment.sessions: the SIWX challenge and the sign-in check, on the SDK's own
client-side proof builder and the in-memory session store (no sockets)."""

from __future__ import annotations

from typing import Any

import pytest
from eth_account import Account
from eth_utils.address import is_checksum_address, to_checksum_address
from hypothesis import given, settings
from hypothesis import strategies as st
from x402.extensions.sign_in_with_x import (
    SIGN_IN_WITH_X,
    SIWxPayload,
    create_siwx_payload,
    encode_siwx_header,
    format_siwe_message,
    verify_siwx_signature,
)
from x402.mechanisms.evm import EthAccountSigner

from gateway.config import loads
from gateway.errors import SignInRefused
from gateway.payment.prices import by_rules
from gateway.payment.sessions import Sessions
from gateway.payment.siwx_proof import eip4361_message, fast_eoa_check, is_checksummed
from gateway.store.sessions import MemorySessions

PUBLIC = "https://api.example.com"
CONFIG = f"""
upstream: http://127.0.0.1:9
facilitator: {{url: "http://127.0.0.1:9/"}}
pay_to: "0x000000000000000000000000000000000000dEaD"
public_url: {PUBLIC}
admin: off
routes:
  - path: /reports/*
    price: "$0.05"
    access: {{for: 24h}}
  - path: /paid/*
    price: "$0.001"
"""


@pytest.fixture
def sessions() -> Sessions:
    return Sessions(loads(CONFIG), MemorySessions())


SETTINGS = loads(CONFIG)
REPORTS, PAID = SETTINGS.routes


async def signed(
    sessions: Sessions, account: Any, path: str = "/reports/a", **changes: Any
) -> SIWxPayload:
    extensions = await sessions.extensions(REPORTS, PUBLIC + path)
    assert extensions is not None
    siwx = extensions[SIGN_IN_WITH_X]
    chain = siwx["supportedChains"][0]
    info = {**siwx["info"], "chainId": chain["chainId"], "type": chain["type"], **changes}
    url = changes.get("uri", PUBLIC + path)  # the SDK's client signs only for its own origin
    return await create_siwx_payload(info, EthAccountSigner(account), url)


async def test_the_challenge_is_bound_to_public_url_and_fresh_each_time(
    sessions: Sessions,
) -> None:
    one = await sessions.extensions(REPORTS, PUBLIC + "/reports/a")
    two = await sessions.extensions(REPORTS, PUBLIC + "/reports/a")
    assert one is not None and two is not None
    info = one[SIGN_IN_WITH_X]["info"]
    assert (info["domain"], info["uri"]) == ("api.example.com", PUBLIC + "/reports/a")
    assert info["nonce"] != two[SIGN_IN_WITH_X]["info"]["nonce"]
    assert one[SIGN_IN_WITH_X]["supportedChains"] == [{"chainId": "eip155:84532", "type": "eip191"}]
    assert await sessions.extensions(PAID, PUBLIC + "/paid/x") is None


async def test_a_paid_wallet_signs_in_once_per_nonce(sessions: Sessions) -> None:
    account = Account.create()
    await sessions.paid(REPORTS, account.address)
    header = encode_siwx_header(await signed(sessions, account))
    assert await sessions.sign_in(REPORTS, "/reports/a", header) == account.address
    with pytest.raises(SignInRefused) as refused:
        await sessions.sign_in(REPORTS, "/reports/a", header)
    assert refused.value.reason == "siwx_nonce_used"


@pytest.mark.parametrize(
    ("changes", "path", "reason"),
    [
        ({}, "/reports/b", "invalid_siwx_uri_mismatch"),
        (
            {"domain": "evil.example", "uri": "https://evil.example/reports/a"},
            "/reports/a",
            "invalid_siwx_domain_mismatch",
        ),
        ({"chainId": "eip155:1"}, "/reports/a", "invalid_siwx_unsupported_chain"),
        ({"issuedAt": "2020-01-01T00:00:00Z"}, "/reports/a", "invalid_siwx_issued_at_too_old"),
    ],
)
async def test_refusals_say_why(
    sessions: Sessions, changes: dict[str, Any], path: str, reason: str
) -> None:
    account = Account.create()
    await sessions.paid(REPORTS, account.address)
    payload = await signed(sessions, account, **changes)
    with pytest.raises(SignInRefused) as refused:
        await sessions.sign_in(REPORTS, path, encode_siwx_header(payload))
    assert refused.value.reason == reason


async def test_an_unpaid_or_forged_wallet_is_refused(sessions: Sessions) -> None:
    payer, other = Account.create(), Account.create()
    await sessions.paid(REPORTS, payer.address)
    with pytest.raises(SignInRefused) as refused:
        await sessions.sign_in(
            REPORTS, "/reports/a", encode_siwx_header(await signed(sessions, other))
        )
    assert refused.value.reason == "siwx_not_paid"
    forged = (await signed(sessions, other)).model_copy(update={"address": payer.address})
    with pytest.raises(SignInRefused) as refused:
        await sessions.sign_in(REPORTS, "/reports/a", encode_siwx_header(forged))
    assert refused.value.reason == "invalid_siwx_signature"


@pytest.mark.parametrize("header", ["", "!!!", "e30=", "x" * 9000, "W1td" * 10])
async def test_unreadable_headers_are_refused(sessions: Sessions, header: str) -> None:
    with pytest.raises(SignInRefused) as refused:
        await sessions.sign_in(REPORTS, "/reports/a", header)
    assert refused.value.reason == "invalid_siwx_header"


# --- the fast path agrees with the SDK ----------------------------------------------------

_TEXT = st.text(st.characters(min_codepoint=32, max_codepoint=126), min_size=1, max_size=30)


@settings(max_examples=60, deadline=None)
@given(
    statement=st.none() | _TEXT,
    request_id=st.none() | _TEXT.filter(lambda t: t.strip() == t),
    expiration=st.booleans(),
    resources=st.none() | st.lists(st.just("https://api.example.com/reports/z"), max_size=2),
)
async def test_the_fast_message_is_the_sdks_message(
    statement: str | None, request_id: str | None, expiration: bool, resources: list[str] | None
) -> None:
    account = Account.create()
    payload = SIWxPayload(
        domain="api.example.com",
        address=account.address,
        statement=statement,
        uri="https://api.example.com/reports/a",
        version="1",
        chainId="eip155:84532",
        type="eip191",
        nonce="a1b2c3d4e5f6a7b8",
        issuedAt="2026-11-26T13:45:33.055619Z",
        expirationTime="2026-11-26T13:50:33.055633Z" if expiration else None,
        requestId=request_id,
        resources=resources,
        signature="0x",
    )
    try:
        expected = format_siwe_message(payload, account.address)
    except ValueError:
        return  # the SDK refuses it; the fast path then defers to the SDK anyway
    assert eip4361_message(payload, "84532") == expected


async def test_the_signature_check_agrees_with_the_sdks(sessions: Sessions) -> None:
    payer, other = Account.create(), Account.create()
    good = await signed(sessions, payer)
    forged = (await signed(sessions, other)).model_copy(update={"address": payer.address})
    for proof in (good, forged):
        sdk = await verify_siwx_signature(proof)
        assert fast_eoa_check(proof) == sdk.is_valid


async def test_whether_a_wallet_paid_is_told_only_to_its_owner(sessions: Sessions) -> None:
    unpaid, other = Account.create(), Account.create()
    forged = (await signed(sessions, other)).model_copy(update={"address": unpaid.address})
    with pytest.raises(SignInRefused) as refused:
        await sessions.sign_in(REPORTS, "/reports/a", encode_siwx_header(forged))
    assert refused.value.reason == "invalid_siwx_signature"  # not siwx_not_paid


async def test_unusual_proofs_are_refused_not_sent_down_a_slower_road(sessions: Sessions) -> None:
    account = Account.create()
    await sessions.paid(REPORTS, account.address)
    lower = (await signed(sessions, account)).model_copy(
        update={"address": account.address.lower()}
    )
    with pytest.raises(SignInRefused) as refused:
        await sessions.sign_in(REPORTS, "/reports/a", encode_siwx_header(lower))
    assert refused.value.reason == "invalid_siwx_message"


async def test_the_fast_path_refuses_anything_unusual(sessions: Sessions) -> None:
    account = Account.create()
    plain = await signed(sessions, account)
    assert fast_eoa_check(plain)
    assert not fast_eoa_check(plain.model_copy(update={"address": plain.address.lower()}))
    assert not fast_eoa_check(plain.model_copy(update={"statement": "a\nURI: x"}))
    assert not fast_eoa_check(plain.model_copy(update={"nonce": "short"}))
    assert not fast_eoa_check(plain.model_copy(update={"signature": "0x" + "00" * 65}))


@settings(max_examples=100, deadline=None)
@given(raw=st.binary(min_size=20, max_size=20), flips=st.sets(st.integers(0, 39), max_size=3))
def test_the_checksum_check_is_eip55(raw: bytes, flips: set[int]) -> None:
    address = to_checksum_address(raw)
    assert is_checksummed(address)
    assert is_checksummed(address.lower()) == is_checksum_address(address.lower())
    digits = list(address[2:])
    for i in flips:
        digits[i] = digits[i].swapcase()
    changed = "0x" + "".join(digits)
    assert is_checksummed(changed) == is_checksum_address(changed)


async def test_the_fast_path_takes_both_recovery_id_spellings(sessions: Sessions) -> None:
    plain = await signed(sessions, Account.create())
    raw = bytes.fromhex(plain.signature.removeprefix("0x"))
    low_v = "0x" + (raw[:64] + bytes([raw[64] - 27])).hex()
    assert fast_eoa_check(plain.model_copy(update={"signature": low_v}))
    assert not fast_eoa_check(plain.model_copy(update={"signature": plain.signature[:-2] + "05"}))
    assert not fast_eoa_check(plain.model_copy(update={"signature": "0xzz"}))


# --- what spends a nonce ------------------------------------------------------------------


async def challenge(sessions: Sessions, path: str = "/reports/a") -> dict[str, Any]:
    extensions = await sessions.extensions(REPORTS, PUBLIC + path)
    assert extensions is not None
    siwx = extensions[SIGN_IN_WITH_X]
    chain = siwx["supportedChains"][0]
    return {**siwx["info"], "chainId": chain["chainId"], "type": chain["type"]}


async def test_a_proof_that_fails_its_checks_spends_no_nonce(sessions: Sessions) -> None:
    payer, other = Account.create(), Account.create()
    await sessions.paid(REPORTS, payer.address)
    info = await challenge(sessions)
    url = PUBLIC + "/reports/a"
    forged = (await create_siwx_payload(info, EthAccountSigner(other), url)).model_copy(
        update={"address": payer.address}
    )
    wrong_path = await create_siwx_payload(info, EthAccountSigner(payer), url)
    for header, path in (
        (encode_siwx_header(forged), "/reports/a"),
        (encode_siwx_header(wrong_path), "/reports/b"),
    ):
        with pytest.raises(SignInRefused):
            await sessions.sign_in(REPORTS, path, header)
    # The owner's own proof with that challenge's nonce still signs in.
    genuine = encode_siwx_header(await create_siwx_payload(info, EthAccountSigner(payer), url))
    assert await sessions.sign_in(REPORTS, "/reports/a", genuine) == payer.address


async def test_a_proof_refused_for_want_of_payment_is_spent(sessions: Sessions) -> None:
    payer = Account.create()
    header = encode_siwx_header(await signed(sessions, payer))
    with pytest.raises(SignInRefused) as refused:
        await sessions.sign_in(REPORTS, "/reports/a", header)
    assert refused.value.reason == "siwx_not_paid"
    await sessions.paid(REPORTS, payer.address)
    # Replayed once the wallet has paid (someone who saw it go by): still single-use.
    with pytest.raises(SignInRefused) as refused:
        await sessions.sign_in(REPORTS, "/reports/a", header)
    assert refused.value.reason == "siwx_nonce_used"
    fresh = encode_siwx_header(await signed(sessions, payer))
    assert await sessions.sign_in(REPORTS, "/reports/a", fresh) == payer.address


SPLIT = loads(
    CONFIG.replace(
        "  - path: /paid/*\n",
        "  - path: /dear/*\n"
        "    methods: [GET]\n"
        '    price: "$0.01"\n'
        "    access: {for: 24h}\n"
        "  - path: /dear/*\n"
        "    methods: [POST]\n"
        '    price: "$5.00"\n'
        "    access: {for: 24h}\n"
        "  - path: /paid/*\n",
    )
)


async def test_a_payment_for_one_method_signs_in_to_that_route_only() -> None:
    """Two routes on one path pattern with their own methods and prices are two routes: the
    cheap GET's payment never signs its payer in to the dear POST (red team, session 8)."""
    cheap, dear = SPLIT.routes[1], SPLIT.routes[2]
    assert (cheap.path, dear.path) == ("/dear/*", "/dear/*")
    sessions = Sessions(SPLIT, MemorySessions())
    account = Account.create()
    await sessions.paid(cheap, account.address)
    extensions = await sessions.extensions(dear, PUBLIC + "/dear/x")
    assert extensions is not None
    siwx = extensions[SIGN_IN_WITH_X]
    chain = siwx["supportedChains"][0]
    info = {**siwx["info"], "chainId": chain["chainId"], "type": chain["type"]}
    proof = await create_siwx_payload(info, EthAccountSigner(account), PUBLIC + "/dear/x")
    with pytest.raises(SignInRefused) as refused:
        await sessions.sign_in(dear, "/dear/x", encode_siwx_header(proof))
    assert refused.value.reason == "siwx_not_paid"
    again = info | {"nonce": "a" * 16}
    proof = await create_siwx_payload(again, EthAccountSigner(account), PUBLIC + "/dear/x")
    assert await sessions.sign_in(cheap, "/dear/x", encode_siwx_header(proof)) == account.address


DYNAMIC = loads(
    CONFIG.replace(
        "  - path: /paid/*\n",
        "  - path: /export/*\n"
        '    price: "$0.001"\n'
        "    price_by:\n"
        '      query.size: {large: "$5.00"}\n'
        "    access: {for: 24h}\n"
        "  - path: /paid/*\n",
    )
)


async def proof_for(sessions: Sessions, route: Any, account: Any, path: str) -> str:
    extensions = await sessions.extensions(route, PUBLIC + path)
    assert extensions is not None
    siwx = extensions[SIGN_IN_WITH_X]
    chain = siwx["supportedChains"][0]
    info = {**siwx["info"], "chainId": chain["chainId"], "type": chain["type"]}
    return encode_siwx_header(
        await create_siwx_payload(info, EthAccountSigner(account), PUBLIC + path)
    )


async def test_a_payment_at_one_price_of_a_dynamic_route_signs_in_at_that_price_only() -> None:
    """`price_by` (or a price hook) with `access`: the cheapest price paid once must not sign
    its payer in where the route asks more (red team, session 8)."""
    export = DYNAMIC.routes[1]
    cheap, dear = by_rules(export, "size=small", {}), by_rules(export, "size=large", {})
    assert (cheap.accepts[0].amount, dear.accepts[0].amount) == (1_000, 5_000_000)
    sessions = Sessions(DYNAMIC, MemorySessions())
    account = Account.create()
    await sessions.paid(cheap, account.address)
    with pytest.raises(SignInRefused) as refused:
        await sessions.sign_in(
            dear, "/export/a", await proof_for(sessions, dear, account, "/export/a")
        )
    assert refused.value.reason == "siwx_not_paid"
    proof = await proof_for(sessions, cheap, account, "/export/b")
    assert await sessions.sign_in(cheap, "/export/b", proof) == account.address
    await sessions.paid(dear, account.address)
    proof = await proof_for(sessions, dear, account, "/export/c")
    assert await sessions.sign_in(dear, "/export/c", proof) == account.address
