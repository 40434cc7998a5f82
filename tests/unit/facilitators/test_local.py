"""LocalFacilitator without a chain: what it serves, and how it fails when the node is
missing or wrong. (Settling against a real chain is in tests/e2e/test_chain_infra.py.)"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest
import requests
from aiohttp import web
from aiohttp.test_utils import TestServer
from x402.schemas import PaymentPayload, PaymentRequirements

from gateway.config.settings import LocalFacilitatorSettings
from gateway.demo.chain import ANVIL_KEYS, free_port, new_account
from gateway.demo.payer import make_x402_client, sign_requirements
from gateway.errors import FacilitatorUnavailable
from gateway.facilitators.local import LocalFacilitator, _is_rpc_failure

NETWORK = "eip155:84532"
TOKEN = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
SIGNER = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"  # address of ANVIL_KEYS[1]


def dead_rpc() -> str:
    return f"http://127.0.0.1:{free_port()}"


def requirements(network: str = NETWORK) -> PaymentRequirements:
    return PaymentRequirements(
        scheme="exact",
        network=network,
        asset=TOKEN,
        amount="1000",
        pay_to="0x000000000000000000000000000000000000dEaD",
        max_timeout_seconds=300,
        extra={"name": "USD Coin", "version": "2"},
    )


async def signed(req: PaymentRequirements) -> PaymentPayload:
    client = make_x402_client(new_account(), [(NETWORK, TOKEN)])
    return await sign_requirements(client, req)


@pytest.fixture
async def gone() -> AsyncIterator[LocalFacilitator]:
    async with LocalFacilitator(dead_rpc(), ANVIL_KEYS[1], [NETWORK]) as facilitator:
        yield facilitator


def test_serves_v2_on_its_networks_and_v1_by_legacy_name_without_io() -> None:
    facilitator = LocalFacilitator(dead_rpc(), ANVIL_KEYS[1], [NETWORK])
    supported = facilitator.get_supported()
    kinds = {(k.x402_version, k.scheme, k.network) for k in supported.kinds}
    assert (2, "exact", NETWORK) in kinds
    assert (1, "exact", "base-sepolia") in kinds
    assert not any(v == 2 and n == "eip155:8453" for v, _, n in kinds)
    assert supported.signers["eip155:*"] == [SIGNER]
    assert facilitator.address == SIGNER


def test_needs_a_network() -> None:
    with pytest.raises(ValueError, match="network"):
        LocalFacilitator(dead_rpc(), ANVIL_KEYS[1], [])


def test_from_settings_keeps_the_key_and_url() -> None:
    settings = LocalFacilitatorSettings(rpc_url="http://127.0.0.1:1", private_key=ANVIL_KEYS[1])
    facilitator = LocalFacilitator.from_settings(settings, [NETWORK])
    assert (facilitator.rpc_url, facilitator.address, facilitator.networks) == (
        "http://127.0.0.1:1",
        SIGNER,
        (NETWORK,),
    )


async def test_refuses_work_before_start_and_after_close() -> None:
    facilitator = LocalFacilitator(dead_rpc(), ANVIL_KEYS[1], [NETWORK])
    with pytest.raises(RuntimeError, match="start"):
        await facilitator.ping()
    await facilitator.start()
    await facilitator.close()
    with pytest.raises(RuntimeError, match="start"):
        await facilitator.ping()
    await facilitator.close()  # twice is harmless


async def test_unreachable_node_fails_closed(gone: LocalFacilitator) -> None:
    req = requirements()
    payment = await signed(req)
    with pytest.raises(FacilitatorUnavailable, match="RPC"):
        await gone.ping()
    # The SDK reports the lost node as a signature it failed to verify: not believed.
    with pytest.raises(FacilitatorUnavailable):
        await gone.verify(payment, req)
    with pytest.raises(FacilitatorUnavailable):
        await gone.settle(payment, req)
    problems = await gone.refresh_supported()
    assert len(problems) == 1 and "RPC" in problems[0]


async def test_a_network_it_does_not_serve_is_an_answer_not_an_error(
    gone: LocalFacilitator,
) -> None:
    req = requirements("solana:EtWTRABZaYq6iMfeYKouRu166VU2xqa1")
    payment = await signed(requirements())
    payment = payment.model_copy(update={"accepted": req})
    verified = await gone.verify(payment, req)
    assert (verified.is_valid, verified.invalid_reason) == (False, "unsupported_scheme")
    settled = await gone.settle(payment, req)
    assert (settled.success, settled.error_reason, settled.transaction) == (
        False,
        "unsupported_scheme",
        "",
    )


@contextlib.asynccontextmanager
async def fake_rpc(chain_id: int) -> AsyncIterator[str]:
    """A JSON-RPC endpoint on this test's own event loop that knows only eth_chainId."""

    async def rpc(request: web.Request) -> web.Response:
        body = await request.json()
        await asyncio.sleep(0.05)
        return web.json_response({"jsonrpc": "2.0", "id": body["id"], "result": hex(chain_id)})

    app = web.Application()
    app.router.add_post("/", rpc)
    async with TestServer(app, host="127.0.0.1") as server:
        yield str(server.make_url("/"))


async def test_calls_run_off_the_event_loop() -> None:
    # The node answers from this very loop: a call made on the loop would wait forever.
    async with fake_rpc(84532) as url, LocalFacilitator(url, ANVIL_KEYS[1], [NETWORK]) as ok:
        await asyncio.wait_for(ok.ping(), timeout=10)
        assert await ok.refresh_supported() == []


async def test_a_node_on_another_chain_is_not_ready() -> None:
    async with fake_rpc(1) as url, LocalFacilitator(url, ANVIL_KEYS[1], [NETWORK]) as wrong:
        with pytest.raises(FacilitatorUnavailable, match="chain 1,"):
            await wrong.ping()


def test_rpc_failures_are_told_from_bugs() -> None:
    refused = requests.ConnectionError("refused")
    wrapped = RuntimeError("failed to check whether asset is a contract")
    wrapped.__cause__ = refused
    assert _is_rpc_failure(refused)
    assert _is_rpc_failure(wrapped)
    assert not _is_rpc_failure(KeyError("authorization"))
    loop_a, loop_b = ValueError("a"), ValueError("b")
    loop_a.__cause__, loop_b.__cause__ = loop_b, loop_a
    assert not _is_rpc_failure(loop_a)


def test_batch_settlement_is_served_with_the_authorizer_it_is_given() -> None:
    from eth_account import Account

    key = "0x" + "77" * 32
    with_key = LocalFacilitator(dead_rpc(), ANVIL_KEYS[1], [NETWORK], authorizer_key=key)
    (kind,) = [k for k in with_key.get_supported().kinds if k.scheme == "batch-settlement"]
    assert (kind.network, kind.extra) == (
        NETWORK,
        {"receiverAuthorizer": Account.from_key(key).address},
    )
    # without one it still takes deposits; servers then sign their own claims and refunds
    plain = LocalFacilitator(dead_rpc(), ANVIL_KEYS[1], [NETWORK])
    (kind,) = [k for k in plain.get_supported().kinds if k.scheme == "batch-settlement"]
    assert not kind.extra
