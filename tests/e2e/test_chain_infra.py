"""The payment parts on their own, before any gateway: token, chain helpers, the SDK payer
client, the facilitator over HTTP and in-process. If these fail, every gateway e2e test
would fail for a reason that is not the gateway's."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from eth_account.signers.local import LocalAccount
from x402 import x402Client
from x402.http import (
    FacilitatorConfig,
    HTTPFacilitatorClient,
    decode_payment_response_header,
    decode_payment_signature_header,
    encode_payment_required_header,
    encode_payment_response_header,
)
from x402.schemas import PaymentPayload, PaymentRequired, PaymentRequirements, ResourceInfo
from x402.schemas.v1 import PaymentRequiredV1

from gateway.demo import chain as chainlib
from gateway.demo.payer import (
    authorization_of,
    httpx_payer,
    pay_challenge,
    sign_requirements,
    sign_requirements_v1,
)
from gateway.errors import FacilitatorUnavailable
from gateway.facilitators.local import LocalFacilitator
from tests.e2e.conftest import PAY_TO, Chain

pytestmark = pytest.mark.e2e

Payer = Callable[..., LocalAccount]
ClientFor = Callable[[LocalAccount], x402Client]


SOLANA = "solana:EtWTRABZaYq6iMfeYKouRu166VU2xqa1"


def _moved(
    payment: PaymentPayload, requirements: PaymentRequirements
) -> tuple[PaymentPayload, PaymentRequirements]:
    """The same signed payment, claiming to be for other requirements."""
    data = {**payment.model_dump(by_alias=True), "accepted": requirements.model_dump(by_alias=True)}
    return PaymentPayload.model_validate(data), requirements


def _body(payload: Any, requirements: Any) -> dict[str, Any]:
    return {
        "x402Version": payload.x402_version,
        "paymentPayload": payload.model_dump(mode="json", by_alias=True, exclude_none=True),
        "paymentRequirements": requirements.model_dump(
            mode="json", by_alias=True, exclude_none=True
        ),
    }


async def _post(url: str, body: Any) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as session, session.post(url, json=body) as resp:
        return resp.status, await resp.json()


def test_shipped_artifact_is_what_the_source_compiles_to(tmp_path: Any) -> None:
    node = shutil.which("node")
    if node is None or not (chainlib.REPO_ROOT / "node_modules/solc").is_dir():
        pytest.skip("node or solc-js missing: run make setup")
    script = str(chainlib.REPO_ROOT / "scripts/compile_token.js")
    subprocess.run([node, script, "--out", str(tmp_path)], check=True, capture_output=True)
    for name in ("TestUSDC", "Multicall3"):
        fresh = (tmp_path / f"{name}.json").read_text()
        shipped = (chainlib.CONTRACTS_DIR / f"{name}.json").read_text()
        assert fresh == shipped, f"{name}.json is stale: run node scripts/compile_token.js"


def test_token_has_the_usdc_domain_and_only_its_owner_mints(chain: Chain) -> None:
    w3 = chainlib.web3_for(chain.rpc_url)
    token = w3.eth.contract(address=chain.token, abi=chainlib.load_artifact("TestUSDC")["abi"])
    assert token.functions.name().call() == "USD Coin"
    assert token.functions.symbol().call() == "USDC"
    assert token.functions.decimals().call() == 6
    assert token.functions.version().call() == "2"
    _, name, version, chain_id, contract, _, _ = token.functions.eip712Domain().call()
    assert (name, version, chain_id, contract) == ("USD Coin", "2", 84532, chain.token)

    account = chainlib.new_account()
    chainlib.mint(chain.rpc_url, chain.token, chain.owner_key, account.address, 5)
    assert chain.balance_of(account.address) == 5
    stranger = chainlib.ANVIL_KEYS[5]
    with pytest.raises(chainlib.ChainError, match="reverted"):
        chainlib.mint(chain.rpc_url, chain.token, stranger, account.address, 5)
    assert chain.balance_of(account.address) == 5


async def test_exact_payment_over_http_moves_exactly_the_amount_once(
    chain: Chain, facilitator_url: str, make_payer: Payer, x402_client_for: ClientFor
) -> None:
    payer = make_payer(1_000_000)
    pay_to = chainlib.new_account().address
    requirements = chain.requirements(amount=1234, pay_to=pay_to)
    payload = await sign_requirements(x402_client_for(payer), requirements)
    nonce = authorization_of(payload)["nonce"]
    txs_before = chain.tx_count(chain.facilitator_address)

    started = time.perf_counter()
    status, verified = await _post(f"{facilitator_url}/verify", _body(payload, requirements))
    verify_ms = (time.perf_counter() - started) * 1000
    assert status == 200
    assert verified == {"isValid": True, "payer": payer.address}
    assert chain.tx_count(chain.facilitator_address) == txs_before, "verify broadcast"
    assert not chain.authorization_state(payer.address, nonce)

    started = time.perf_counter()
    status, settled = await _post(f"{facilitator_url}/settle", _body(payload, requirements))
    settle_ms = (time.perf_counter() - started) * 1000
    assert status == 200
    assert settled["success"] is True, settled
    assert settled["network"] == chain.network
    assert settled["payer"] == payer.address
    assert settled["transaction"].startswith("0x") and len(settled["transaction"]) == 66
    assert chain.balance_of(payer.address) == 1_000_000 - 1234
    assert chain.balance_of(pay_to) == 1234
    assert chain.authorization_state(payer.address, nonce)
    assert chain.tx_count(chain.facilitator_address) == txs_before + 1
    print(f"\nfacilitator over HTTP: verify {verify_ms:.1f} ms, settle {settle_ms:.1f} ms")

    # The same payment again: verify names the used nonce; a settle reaches the chain
    # (the SDK does not simulate before broadcasting) and reverts, moving nothing.
    status, again = await _post(f"{facilitator_url}/verify", _body(payload, requirements))
    assert (status, again["isValid"]) == (200, False)
    assert again["invalidReason"] == "invalid_exact_evm_nonce_already_used"
    status, replay = await _post(f"{facilitator_url}/settle", _body(payload, requirements))
    assert (status, replay["success"]) == (200, False)
    assert chain.tx_count(chain.facilitator_address) == txs_before + 2
    assert chain.balance_of(payer.address) == 1_000_000 - 1234
    assert chain.balance_of(pay_to) == 1234
    ours = chainlib.count_transfer_with_authorization_txs(
        chain.rpc_url, chain.token, sender=chain.facilitator_address, succeeded=True
    )
    assert ours >= 1


async def test_the_sdk_http_client_speaks_to_the_server_in_v2_and_v1(
    chain: Chain, facilitator_url: str, payer: LocalAccount, x402_client_for: ClientFor
) -> None:
    client = HTTPFacilitatorClient(FacilitatorConfig(url=facilitator_url, timeout=30))
    try:
        kinds = {(k.x402_version, k.scheme, k.network) for k in client.get_supported().kinds}
        assert {(2, "exact", chain.network), (1, "exact", "base-sepolia")} <= kinds
        payer_client = x402_client_for(payer)
        before = chain.balance_of(payer.address)

        v2_req = chain.requirements(amount=700)
        v2 = await sign_requirements(payer_client, v2_req)
        assert (await client.verify(v2, v2_req)).is_valid
        assert (await client.settle(v2, v2_req)).success

        v1_req = chain.requirements_v1(amount=300)
        v1 = await sign_requirements_v1(payer_client, v1_req)
        assert (await client.verify(v1, v1_req)).is_valid
        settled = await client.settle(v1, v1_req)
        assert settled.success and settled.network == "base-sepolia"
        assert chain.balance_of(payer.address) == before - 1000
    finally:
        await client.aclose()


async def test_server_refuses_what_it_cannot_read(
    chain: Chain, facilitator_url: str, payer: LocalAccount, x402_client_for: ClientFor
) -> None:
    requirements = chain.requirements()
    payload = await sign_requirements(x402_client_for(payer), requirements)
    good = _body(payload, requirements)
    for bad in (
        [],
        {**good, "x402Version": 3},
        {**good, "x402Version": True},
        {**good, "paymentPayload": "x"},
        {**good, "paymentRequirements": {"scheme": "exact"}},
        {**good, "x402Version": 1},
    ):
        status, answer = await _post(f"{facilitator_url}/verify", bad)
        assert status == 400, bad
        assert "error" in answer
    async with aiohttp.ClientSession() as session:
        big = b'{"x": "' + b"a" * 70_000 + b'"}'
        async with session.post(f"{facilitator_url}/settle", data=big) as resp:
            assert resp.status in (400, 413)
        async with session.post(f"{facilitator_url}/verify", data=b"{not json") as resp:
            assert resp.status == 400
    assert chain.balance_of(payer.address) == 10_000_000


async def test_local_facilitator_verifies_and_settles_in_process(
    chain: Chain,
    local_facilitator: LocalFacilitator,
    make_payer: Payer,
    x402_client_for: ClientFor,
) -> None:
    signer = local_facilitator.address
    assert signer != chain.facilitator_address
    await local_facilitator.ping()
    payer = make_payer(5000)
    requirements = chain.requirements(amount=2000)
    payload = await sign_requirements(x402_client_for(payer), requirements)
    txs_before = chain.tx_count(signer)

    started = time.perf_counter()
    verified = await local_facilitator.verify(payload, requirements)
    verify_ms = (time.perf_counter() - started) * 1000
    assert verified.is_valid and verified.payer == payer.address
    started = time.perf_counter()
    settled = await local_facilitator.settle(payload, requirements)
    settle_ms = (time.perf_counter() - started) * 1000
    assert settled.success, settled
    assert chain.tx_count(signer) == txs_before + 1
    assert chain.balance_of(payer.address) == 3000
    print(f"\nfacilitator in-process: verify {verify_ms:.1f} ms, settle {settle_ms:.1f} ms")

    replay = await local_facilitator.settle(payload, requirements)
    assert not replay.success and replay.transaction, "a replay reaches the chain and reverts"
    assert chain.tx_count(signer) == txs_before + 2
    assert chain.balance_of(payer.address) == 3000


async def test_local_facilitator_names_what_is_wrong_without_broadcasting(
    chain: Chain,
    local_facilitator: LocalFacilitator,
    make_payer: Payer,
    x402_client_for: ClientFor,
) -> None:
    signer = local_facilitator.address
    txs_before = chain.tx_count(signer)
    poor = make_payer(10)
    requirements = chain.requirements(amount=1000)
    poor_payment = await sign_requirements(x402_client_for(poor), requirements)
    answer = await local_facilitator.verify(poor_payment, requirements)
    assert answer.invalid_reason == "invalid_exact_evm_insufficient_balance"

    rich = make_payer()
    payment = await sign_requirements(x402_client_for(rich), requirements)
    cheaper = requirements.model_copy(update={"amount": "999"})
    answer = await local_facilitator.verify(payment, cheaper)
    assert answer.invalid_reason == "invalid_exact_evm_payload_authorization_value_mismatch"
    elsewhere = requirements.model_copy(update={"pay_to": PAY_TO.replace("dEaD", "bEEF")})
    answer = await local_facilitator.verify(payment, elsewhere)
    assert answer.invalid_reason == "invalid_exact_evm_payload_recipient_mismatch"

    forged = payment.model_copy(deep=True)
    forged.payload["authorization"]["value"] = "100000"
    forged_req = requirements.model_copy(update={"amount": "100000"})
    answer = await local_facilitator.verify(forged, forged_req)
    assert answer.invalid_reason == "invalid_exact_evm_payload_signature"
    settled = await local_facilitator.settle(forged, forged_req)
    assert not settled.success and not settled.transaction

    # The SDK serves every eip155 chain once one is registered: a payment signed for this
    # chain then fails on the domain's chain id. A non-EVM network is not served at all.
    mainnet = _moved(payment, requirements.model_copy(update={"network": "eip155:1"}))
    assert not (await local_facilitator.verify(*mainnet)).is_valid
    solana = _moved(payment, requirements.model_copy(update={"network": SOLANA}))
    assert (await local_facilitator.verify(*solana)).invalid_reason == "unsupported_scheme"
    assert (await local_facilitator.settle(*solana)).error_reason == "unsupported_scheme"
    assert chain.tx_count(signer) == txs_before
    assert chain.balance_of(rich.address) == 10_000_000


async def test_local_facilitator_fails_closed_when_the_node_is_gone(
    chain: Chain, payer: LocalAccount, x402_client_for: ClientFor
) -> None:
    requirements = chain.requirements()
    payment = await sign_requirements(x402_client_for(payer), requirements)
    dead_rpc = f"http://127.0.0.1:{chainlib.free_port()}"
    async with LocalFacilitator(dead_rpc, chain.local_facilitator_key, [chain.network]) as gone:
        with pytest.raises(FacilitatorUnavailable):
            await gone.ping()
        with pytest.raises(FacilitatorUnavailable):
            await gone.verify(payment, requirements)
        with pytest.raises(FacilitatorUnavailable):
            await gone.settle(payment, requirements)
        assert await gone.refresh_supported() != []
    assert chain.balance_of(payer.address) == 10_000_000


@contextlib.asynccontextmanager
async def mini_paywall(
    chain: Chain, facilitator: LocalFacilitator, amount: int
) -> AsyncIterator[str]:
    """The smallest honest x402 seller: a 402 with both challenges, then verify + settle.
    (No gateway: this only proves the SDK's payer clients pay in the test USDC.)"""
    v2_req = chain.requirements(amount=amount)

    async def paid(request: web.Request) -> web.Response:
        v1_req = chain.requirements_v1(amount=amount, resource=str(request.url))
        header = request.headers.get("PAYMENT-SIGNATURE") or request.headers.get("X-PAYMENT")
        if header is None:
            challenge = PaymentRequired(
                resource=ResourceInfo(url=str(request.url)), accepts=[v2_req]
            )
            v1_body = PaymentRequiredV1(error="payment required", accepts=[v1_req])
            return web.Response(
                status=402,
                headers={"PAYMENT-REQUIRED": encode_payment_required_header(challenge)},
                body=v1_body.model_dump_json(by_alias=True, exclude_none=True),
                content_type="application/json",
            )
        payment = decode_payment_signature_header(header)
        req = v1_req if payment.x402_version == 1 else v2_req
        if not (await facilitator.verify(payment, req)).is_valid:
            return web.Response(status=402)
        settled = await facilitator.settle(payment, req)
        name = "X-PAYMENT-RESPONSE" if payment.x402_version == 1 else "PAYMENT-RESPONSE"
        return web.json_response(
            {"paid": settled.success}, headers={name: encode_payment_response_header(settled)}
        )

    app = web.Application()
    app.router.add_get("/paid", paid)
    async with TestServer(app, host="127.0.0.1") as server:
        yield str(server.make_url("/paid"))


async def test_sdk_payer_clients_pay_a_402_in_the_test_usdc(
    chain: Chain,
    local_facilitator: LocalFacilitator,
    payer: LocalAccount,
    x402_client_for: ClientFor,
) -> None:
    client = x402_client_for(payer)
    async with mini_paywall(chain, local_facilitator, 100) as url:
        # "Just pay": the SDK's httpx wrapper answers the 402 by itself.
        async with httpx_payer(client, timeout=30) as http:
            response = await http.get(url)
        assert response.status_code == 200 and response.json() == {"paid": True}
        assert decode_payment_response_header(response.headers["PAYMENT-RESPONSE"]).success
        assert chain.balance_of(payer.address) == 10_000_000 - 100

        # Step by step: sign for the 402 (v2 header, then the v1 body), send it ourselves.
        async with aiohttp.ClientSession() as session:
            for v1, sent in ((False, "PAYMENT-SIGNATURE"), (True, "X-PAYMENT")):
                async with session.get(url) as challenge:
                    assert challenge.status == 402
                    headers, payment = await pay_challenge(
                        client, dict(challenge.headers), await challenge.read(), v1=v1
                    )
                assert list(headers) == [sent]
                assert payment.x402_version == (1 if v1 else 2)
                async with session.get(url, headers=headers) as paid:
                    assert paid.status == 200
                nonce = authorization_of(payment)["nonce"]
                assert chain.authorization_state(payer.address, nonce)
    assert chain.balance_of(payer.address) == 10_000_000 - 300


async def test_concurrent_settlements_each_land_once(
    chain: Chain,
    local_facilitator: LocalFacilitator,
    make_payer: Payer,
    x402_client_for: ClientFor,
) -> None:
    """The pool runs settlements side by side; the signer's nonces must not collide."""
    signer = local_facilitator.address
    payers = [make_payer(1000) for _ in range(8)]
    requirements = chain.requirements(amount=1000)
    payments = [await sign_requirements(x402_client_for(p), requirements) for p in payers]
    txs_before = chain.tx_count(signer)
    results = await asyncio.gather(
        *(local_facilitator.settle(payment, requirements) for payment in payments)
    )
    assert all(r.success for r in results), [r.error_reason for r in results]
    assert len({r.transaction for r in results}) == len(payers)
    assert chain.tx_count(signer) == txs_before + len(payers)
    assert [chain.balance_of(p.address) for p in payers] == [0] * len(payers)
