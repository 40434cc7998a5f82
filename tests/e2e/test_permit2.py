"""Permit2 `exact` through a real gateway: a token without EIP-3009 (TestUSDT), the SDK's
facilitator over HTTP (exact incl. Permit2, with `erc20ApprovalGasSponsoring`), the SDK's
paying clients, anvil. Money is counted on chain.

Two SDK clients pay here: the plain one (`EthAccountSigner`: signs the Permit2 transfer only,
so a payer without an allowance meets the 412) and the RPC one (`EthAccountSignerWithRPC`:
reads the allowance and, when the 402 declares it, signs the approval for the facilitator
to broadcast: the payer needs no gas at all).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from x402.extensions.erc20_approval_gas_sponsoring import ERC20_APPROVAL_GAS_SPONSORING_KEY
from x402.http.utils import decode_payment_required_header, decode_payment_response_header

from gateway.demo import chain as chainlib
from gateway.demo import x402_contracts as contracts
from gateway.demo import x402_sdk as sdk
from gateway.demo.payer import make_x402_client, pay_challenge
from tests.e2e.conftest import Chain
from tests.e2e.gateway_proc import GatewayProcess, Origin, gateway

pytestmark = pytest.mark.e2e
PRICE = 10_000  # $0.01 in 6-decimal TestUSDT


@pytest.fixture(scope="module")
def gw(
    chain: Chain,
    origin: Origin,
    pay_to: str,
    facilitator_url: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[GatewayProcess]:
    usdt = {
        "address": chain.local.usdt,
        "name": "Tether USD",
        "version": "1",
        "decimals": 6,
        "transfer": "permit2",
        "symbol": "USDT",
    }
    cfg = {
        "upstream": origin.url,
        "facilitator": {"url": facilitator_url, "timeout": "20s"},
        "network": chain.network,
        "pay_to": pay_to,
        "asset": {"address": chain.token, "name": "USD Coin", "version": "2", "decimals": 6},
        "assets": {"usdt": usdt},
        "routes": [{"path": "/report/*", "price": "$0.01", "asset": "usdt"}],
    }
    with gateway(cfg, tmp_path_factory.mktemp("gw-permit2")) as g:
        yield g


async def _challenge(gw: GatewayProcess, path: str) -> httpx.Response:
    async with httpx.AsyncClient() as http:
        r = await http.get(gw.url + path)
    assert r.status_code == 402, r.text
    return r


async def _get(gw: GatewayProcess, path: str, headers: dict[str, str]) -> httpx.Response:
    async with httpx.AsyncClient(timeout=30) as http:
        return await http.get(gw.url + path, headers=headers)


def _plain_client(chain: Chain, account: Any) -> Any:
    return make_x402_client(account, [(chain.network, chain.local.usdt)])


def _rpc_client(chain: Chain, account: Any) -> Any:
    return sdk.make_payer_client(account, chain.rpc_url, [(chain.network, chain.local.usdt)])


async def test_the_challenge_offers_usdt_through_permit2_and_sponsored_approval(
    gw: GatewayProcess, chain: Chain
) -> None:
    r = await _challenge(gw, "/report/q1")
    required = decode_payment_required_header(r.headers["PAYMENT-REQUIRED"])
    (req,) = required.accepts
    assert (req.scheme, req.amount, req.asset.lower()) == (
        "exact",
        str(PRICE),
        chain.local.usdt.lower(),
    )
    assert req.extra == {"assetTransferMethod": "permit2"}
    assert ERC20_APPROVAL_GAS_SPONSORING_KEY in (required.extensions or {})
    assert r.json()["accepts"] == []  # v1 clients cannot sign Permit2


async def test_first_time_payer_gets_412_approves_then_the_same_payment_pays_once(
    gw: GatewayProcess, origin: Origin, chain: Chain, pay_to: str
) -> None:
    payer = chain.local.new_usdt_payer(1_000_000, eth_wei=10**16)  # gas for its own approve
    r = await _challenge(gw, "/report/first")
    headers, _ = await pay_challenge(_plain_client(chain, payer), r.headers, r.content)
    settlements = chain.tx_count(chain.facilitator_address)

    refused = await _get(gw, "/report/first", headers)
    assert refused.status_code == 412, refused.text
    again = decode_payment_required_header(refused.headers["PAYMENT-REQUIRED"])
    assert again.error == "permit2_allowance_required" and again.accepts
    assert origin.log.for_path("/report/first") == []
    assert chain.tx_count(chain.facilitator_address) == settlements

    contracts.approve_permit2(chain.rpc_url, chain.local.usdt, payer.key.hex())
    before = chain.local.usdt_balance_of(pay_to)
    paid = await _get(gw, "/report/first", headers)  # the very same signed payment
    assert paid.status_code == 200, paid.text
    receipt = decode_payment_response_header(paid.headers["PAYMENT-RESPONSE"])
    assert receipt.success and receipt.payer.lower() == payer.address.lower()
    print(f"\npermit2 exact: tx {receipt.transaction} moved {PRICE} USDT units")
    assert chain.local.usdt_balance_of(pay_to) == before + PRICE
    assert chain.local.usdt_balance_of(payer.address) == 1_000_000 - PRICE
    assert chain.tx_count(chain.facilitator_address) == settlements + 1

    # The claim keys on (owner, Permit2 nonce): a replay never reaches the facilitator, whose
    # verify would pass it and whose settle would broadcast a reverting transaction.
    replay = await _get(gw, "/report/first", headers)
    assert replay.status_code == 409, replay.text
    assert decode_payment_response_header(replay.headers["PAYMENT-RESPONSE"]).transaction == (
        receipt.transaction
    )
    assert chain.tx_count(chain.facilitator_address) == settlements + 1
    assert chain.local.usdt_balance_of(pay_to) == before + PRICE


async def test_payer_without_gas_pays_with_a_sponsored_approval(
    gw: GatewayProcess, chain: Chain, pay_to: str
) -> None:
    payer = chain.local.new_usdt_payer(1_000_000)  # USDT only: no ETH, no allowance
    assert chainlib.eth_balance(chain.rpc_url, payer.address) == 0
    r = await _challenge(gw, "/report/sponsored")
    headers, payload = await pay_challenge(_rpc_client(chain, payer), r.headers, r.content)
    assert ERC20_APPROVAL_GAS_SPONSORING_KEY in (payload.extensions or {})
    before = chain.local.usdt_balance_of(pay_to)
    paid = await _get(gw, "/report/sponsored", headers)
    assert paid.status_code == 200, paid.text
    assert decode_payment_response_header(paid.headers["PAYMENT-RESPONSE"]).success
    assert chain.local.usdt_balance_of(pay_to) == before + PRICE
    assert chain.local.usdt_balance_of(payer.address) == 1_000_000 - PRICE
    assert contracts.erc20_allowance(chain.rpc_url, chain.local.usdt, payer.address) > 0


async def test_one_permit2_payment_sent_20_times_at_once_buys_one_response(
    gw: GatewayProcess, origin: Origin, chain: Chain, pay_to: str
) -> None:
    payer = chain.local.new_usdt_payer(1_000_000, approve=True)
    r = await _challenge(gw, "/report/burst")
    headers, _ = await pay_challenge(_plain_client(chain, payer), r.headers, r.content)
    before = chain.local.usdt_balance_of(pay_to)
    settlements = chain.tx_count(chain.facilitator_address)
    answers = await asyncio.gather(*(_get(gw, "/report/burst", headers) for _ in range(20)))
    statuses = sorted(a.status_code for a in answers)
    assert statuses.count(200) == 1, statuses
    assert set(statuses) <= {200, 409}, statuses
    assert len(origin.log.for_path("/report/burst")) == 1
    assert chain.local.usdt_balance_of(pay_to) == before + PRICE
    assert chain.tx_count(chain.facilitator_address) == settlements + 1


# --- the official TypeScript client (@x402/fetch + @x402/evm from npm) -------------------

NODE_PAYER = Path(__file__).with_name("node") / "pay.mjs"


def node_pay(url: str, key: str, chain: Chain) -> dict[str, Any]:
    """One paid GET by `tests/e2e/node/pay.mjs` (skips when node or the packages are absent)."""
    root = Path(__file__).resolve().parents[2]
    if shutil.which("node") is None or not (root / "node_modules/@x402/fetch").is_dir():
        pytest.skip("node or @x402/fetch missing: run scripts/setup.sh --test")
    argv = ["node", str(NODE_PAYER), url, chain.network, chain.local.usdt, chain.rpc_url]
    env = {**os.environ, "X402_PAYER_KEY": "0x" + key.removeprefix("0x")}  # never in argv
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False, env=env)
    assert done.stdout.strip(), done.stderr[-2000:]
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


async def test_typescript_client_without_gas_or_allowance_pays_through_permit2(
    gw: GatewayProcess, chain: Chain, pay_to: str
) -> None:
    payer = chain.local.new_usdt_payer(1_000_000)  # USDT only: the approval is sponsored
    before = chain.local.usdt_balance_of(pay_to)
    result = await asyncio.to_thread(node_pay, gw.url + "/report/ts", payer.key.hex(), chain)
    assert result.get("status") == 200, result
    assert result["settlement"]["success"], result
    print(f"\nTS client, Permit2 exact: tx {result['settlement']['transaction']}")
    assert chain.local.usdt_balance_of(pay_to) == before + PRICE
    assert chain.local.usdt_balance_of(payer.address) == 1_000_000 - PRICE
