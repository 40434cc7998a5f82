"""The x402 contracts on anvil, driven by the official SDK alone (no gateway): the reference
for the gateway's Permit2 `exact`, `upto` and batch-settlement features.

Each flow is what a server, a payer and a facilitator do, in the SDK's own terms:
  requirements  <- x402ResourceServerSync + the scheme's server class (build_requirements)
  payload       <- x402Client + the scheme's client class (sign_payment)
  verify/settle <- x402FacilitatorSync with every EVM scheme (or the resource server, whose
                   scheme hooks keep channel state, for batch-settlement)
and every test counts the money on chain. Run with `-s` to see the gas each step used.

Keys: anvil #3 is this module's facilitator (sends every settlement here), #4 its
batch-settlement receiver authorizer (signs, never sends); no other test uses them.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
from eth_abi.abi import encode as abi_encode
from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_utils.crypto import keccak
from x402.extensions.erc20_approval_gas_sponsoring import (
    declare_erc20_approval_gas_sponsoring_extension,
)
from x402.mechanisms.evm.batch_settlement.server import (
    BatchSettlementChannelManagerSync,
    ChannelManagerConfigSync,
)
from x402.schemas import PaymentPayload, PaymentRequirements, SettleResponse
from x402.schemas.hooks import PaymentResponseContext

from gateway.demo import chain as chainlib
from gateway.demo import x402_contracts as contracts
from gateway.demo import x402_sdk as sdk
from tests.e2e.conftest import Chain

pytestmark = pytest.mark.e2e

FACILITATOR_KEY = chainlib.ANVIL_KEYS[3]
AUTHORIZER_KEY = chainlib.ANVIL_KEYS[4]
USDC_EXTRA = sdk.eip3009_extra("USD Coin", "2")
COMPILED = ("Permit2", "ExactPermit2Proxy", "UptoPermit2Proxy", "BatchSettlement")
COMPILED += ("ERC3009DepositCollector", "Permit2DepositCollector")


@pytest.fixture(scope="module")
def receiver() -> str:
    return str(chainlib.new_account().address)


@pytest.fixture(scope="module")
def x402(chain: Chain, receiver: str) -> Iterator[sdk.LocalX402]:
    """The SDK's facilitator (exact+Permit2+sponsoring, upto, batch-settlement) and a resource
    server over it, with a batch-settlement server scheme for `receiver`."""
    yield sdk.build_local_x402(
        chain.rpc_url, chain.network, FACILITATOR_KEY, AUTHORIZER_KEY, batch_receivers=[receiver]
    )


def _requirements(
    x402: sdk.LocalX402, scheme: str, asset: str, amount: int, pay_to: str, extra: dict[str, Any]
) -> PaymentRequirements:
    return sdk.build_requirements(
        x402.server,
        scheme=scheme,
        network=x402.network,
        asset=asset,
        amount=amount,
        pay_to=pay_to,
        extra=extra,
    )


def _settle(x402: sdk.LocalX402, payload: PaymentPayload, req: PaymentRequirements) -> str:
    verified = x402.facilitator.verify(payload, req)
    assert verified.is_valid, verified
    settled = x402.facilitator.settle(payload, req)
    assert settled.success, settled
    return settled.transaction


def _gas(chain: Chain, label: str, tx_hash: str) -> int:
    used = contracts.gas_used(chain.rpc_url, tx_hash)
    print(f"gas {label}: {used}")
    return used


# ---- artifacts and placement ----


def test_shipped_artifacts_are_what_the_sources_compile_to(tmp_path: Any) -> None:
    node = shutil.which("node")
    if node is None or not (chainlib.REPO_ROOT / "node_modules/solc-0.8.17").is_dir():
        pytest.skip("node or solc-js missing: run make setup")
    for script in ("scripts/compile_x402.js", "scripts/compile_token.js"):
        path = str(chainlib.REPO_ROOT / script)
        subprocess.run([node, path, "--out", str(tmp_path)], check=True, capture_output=True)
    for name in (*COMPILED, "TestUSDT"):
        fresh = (tmp_path / f"{name}.json").read_text()
        shipped = (chainlib.CONTRACTS_DIR / f"{name}.json").read_text()
        assert fresh == shipped, f"{name}.json is stale: rerun its compile script"


def test_contracts_answer_at_the_sdk_addresses(chain: Chain) -> None:
    w3 = chainlib.web3_for(chain.rpc_url)
    placed = contracts.X402Contracts()
    for name, address in contracts.PLACEMENTS.items():
        assert w3.eth.get_code(address) == bytes.fromhex(
            contracts.runtime_code(name, chain.local.chain_id, address)[2:]
        ), name
    permit2 = w3.eth.contract(address=placed.permit2, abi=chainlib.load_artifact("Permit2")["abi"])
    expected = contracts.permit2_domain_separator(chain.local.chain_id)
    assert bytes(permit2.functions.DOMAIN_SEPARATOR().call()) == expected
    # Built by hand (EIP-712 with no version field), not by the helper under test.
    assert expected == keccak(
        abi_encode(
            ["bytes32", "bytes32", "uint256", "address"],
            [
                keccak(text="EIP712Domain(string name,uint256 chainId,address verifyingContract)"),
                keccak(text="Permit2"),
                84532,
                "0x000000000022D473030F116dDEE9F6B43aC78BA3",
            ],
        )
    )
    contracts.check_x402_contracts(chain.rpc_url, placed)  # proxies -> Permit2, ids == SDK's


def test_installing_again_changes_nothing(chain: Chain) -> None:
    before = chainlib.block_number(chain.rpc_url)
    assert contracts.install_x402_contracts(chain.rpc_url) == contracts.X402Contracts()
    assert chainlib.block_number(chain.rpc_url) == before


def test_usdt_is_a_plain_erc20_without_eip3009_or_permit(chain: Chain) -> None:
    w3 = chainlib.web3_for(chain.rpc_url)
    abi = chainlib.load_artifact("TestUSDT")["abi"]
    names = {entry.get("name") for entry in abi}
    assert not names & {"transferWithAuthorization", "receiveWithAuthorization", "permit"}
    usdt = w3.eth.contract(address=chain.local.usdt, abi=abi)
    assert (usdt.functions.name().call(), usdt.functions.symbol().call()) == ("Tether USD", "USDT")
    assert usdt.functions.decimals().call() == 6
    stranger = chain.local.new_usdt_payer(0, eth_wei=10**16)
    mint = usdt.functions.mint(stranger.address, 1).build_transaction({"gas": 100_000})
    with pytest.raises(chainlib.ChainError):
        chainlib.send_transaction(w3, stranger.key.hex(), mint)


# ---- (a) exact through Permit2, paid in USDT ----


async def test_exact_permit2_after_the_payer_approves_permit2_itself(
    chain: Chain, x402: sdk.LocalX402
) -> None:
    pay_to = str(chainlib.new_account().address)
    payer = chain.local.new_usdt_payer(5_000_000, eth_wei=10**16)
    req = _requirements(x402, "exact", chain.local.usdt, 10_000, pay_to, sdk.permit2_extra())
    assert req.extra == {"assetTransferMethod": "permit2"}
    client = sdk.make_payer_client(payer, chain.rpc_url, [(chain.network, chain.local.usdt)])

    # First time: no allowance for Permit2 yet, the facilitator refuses and broadcasts nothing.
    payload = await sdk.sign_payment(client, req)
    refused = x402.facilitator.verify(payload, req)
    assert (refused.is_valid, refused.invalid_reason) == (False, "permit2_allowance_required")

    approval = contracts.approve_permit2(chain.rpc_url, chain.local.usdt, payer.key.hex())
    _gas(chain, "payer approve(Permit2, max)", "0x" + bytes(approval["transactionHash"]).hex())
    tx = _settle(x402, payload, req)
    _gas(chain, "exact Permit2 settle (proxy -> Permit2)", tx)
    assert chain.local.usdt_balance_of(pay_to) == 10_000
    assert chain.local.usdt_balance_of(payer.address) == 5_000_000 - 10_000

    # The same signed payment again: the SDK's verify does not read Permit2's nonce bitmap,
    # so it still says valid, and settle broadcasts a transaction that reverts. Nothing moves
    # twice, but only a claim on (owner, Permit2 nonce) keeps the gateway from paying gas.
    assert x402.facilitator.verify(payload, req).is_valid
    sent = chain.tx_count(x402.signer.address)
    again = x402.facilitator.settle(payload, req)
    assert (again.success, again.error_reason) == (False, "transaction_failed")
    assert chain.tx_count(x402.signer.address) == sent + 1
    assert chain.local.usdt_balance_of(pay_to) == 10_000


async def test_exact_permit2_with_erc20_approval_gas_sponsoring_for_a_payer_without_eth(
    chain: Chain, x402: sdk.LocalX402
) -> None:
    pay_to = str(chainlib.new_account().address)
    payer = chain.local.new_usdt_payer(5_000_000)  # USDT only: no ETH, no allowance
    assert chainlib.eth_balance(chain.rpc_url, payer.address) == 0
    req = _requirements(x402, "exact", chain.local.usdt, 25_000, pay_to, sdk.permit2_extra())
    client = sdk.make_payer_client(payer, chain.rpc_url, [(chain.network, chain.local.usdt)])

    # The server declares the extension; the client adds a signed approve(Permit2) tx.
    payload = await sdk.sign_payment(client, req, declare_erc20_approval_gas_sponsoring_extension())
    assert "erc20ApprovalGasSponsoring" in (payload.extensions or {})
    tx = _settle(x402, payload, req)
    _gas(chain, "exact Permit2 settle after a sponsored approval", tx)
    assert chain.local.usdt_balance_of(pay_to) == 25_000
    assert chain.local.usdt_balance_of(payer.address) == 5_000_000 - 25_000
    assert contracts.erc20_allowance(chain.rpc_url, chain.local.usdt, payer.address) > 0


# ---- (b) upto: authorize a maximum, settle what was used ----


async def test_upto_settles_the_amount_used_not_the_maximum(
    chain: Chain, x402: sdk.LocalX402
) -> None:
    pay_to = str(chainlib.new_account().address)
    payer = chain.local.new_usdt_payer(5_000_000, approve=True)
    req = _requirements(x402, "upto", chain.local.usdt, 100_000, pay_to, sdk.permit2_extra())
    # The upto server scheme names the only facilitator allowed to settle (from /supported).
    assert req.extra["facilitatorAddress"] == x402.signer.address
    client = sdk.make_payer_client(payer, chain.rpc_url, [(chain.network, chain.local.usdt)])
    payload = await sdk.sign_payment(client, req)

    # The server settles the amount actually used by putting it in the requirements' amount.
    used = req.model_copy(update={"amount": "12300"})
    assert x402.facilitator.verify(payload, req).is_valid
    settled = x402.facilitator.settle(payload, used)
    assert (settled.success, settled.amount) == (True, "12300"), settled
    _gas(chain, "upto Permit2 settle", settled.transaction)
    assert chain.local.usdt_balance_of(pay_to) == 12_300
    assert chain.local.usdt_balance_of(payer.address) == 5_000_000 - 12_300

    over = req.model_copy(update={"amount": "100001"})
    assert not x402.facilitator.settle(payload, over).success  # never above the maximum


# ---- (c) + (d) batch-settlement: deposit, vouchers, claim, settle, cooperative refund ----


def _pay_through_server(
    x402: sdk.LocalX402, payload: PaymentPayload, req: PaymentRequirements
) -> SettleResponse:
    """What a server does per request: verify, (serve), settle, through the resource server
    whose batch-settlement scheme hooks keep the channel state."""
    verified = x402.server.verify_payment(payload, req)
    assert verified.is_valid, verified.verify
    settled = x402.server.settle_payment(payload, req)
    assert settled.success, settled
    return settled


@pytest.mark.parametrize("token", ["usdc-eip3009", "usdt-permit2"])
async def test_batch_settlement_channel_deposit_vouchers_claim_settle_refund(
    chain: Chain, x402: sdk.LocalX402, receiver: str, token: str
) -> None:
    if token == "usdc-eip3009":
        asset, extra = chain.token, USDC_EXTRA
        payer: LocalAccount = chain.local.new_payer(5_000_000)
    else:
        asset, extra = chain.local.usdt, sdk.permit2_extra()
        payer = chain.local.new_usdt_payer(5_000_000, approve=True)
    price, calls = 1_000, 5
    req = _requirements(x402, "batch-settlement", asset, price, receiver, extra)
    # The server scheme adds the channel terms (the facilitator's authorizer from /supported).
    assert req.extra["receiverAuthorizer"] == Account.from_key(AUTHORIZER_KEY).address
    assert req.extra["withdrawDelay"] == 900
    client = sdk.make_payer_client(payer, chain.rpc_url, [(chain.network, asset)])
    receiver_before = chainlib.balance_of(chain.rpc_url, asset, receiver)
    facilitator_txs = chain.tx_count(x402.signer.address)

    kinds = []
    for _ in range(calls):
        payload = await sdk.sign_payment(client, req)
        kinds.append(payload.payload["type"])
        settled = _pay_through_server(x402, payload, req)
        if payload.payload["type"] == "deposit":
            _gas(chain, f"batch deposit ({token})", settled.transaction)
        await client.handle_payment_response(
            PaymentResponseContext(
                payment_payload=payload, requirements=req, settle_response=settled
            )
        )
    assert kinds == ["deposit"] + ["voucher"] * (calls - 1)
    deposit = int(req.extra["minDeposit"])
    assert chainlib.balance_of(chain.rpc_url, asset, payer.address) == 5_000_000 - deposit
    assert chain.tx_count(x402.signer.address) == facilitator_txs + 1  # vouchers: no tx

    manager = BatchSettlementChannelManagerSync(
        ChannelManagerConfigSync(
            scheme=x402.batch_servers[receiver],
            facilitator=x402.facilitator,
            receiver=receiver,
            token=asset,
            network=chain.network,
        )
    )
    done = manager.claim_and_settle()
    _gas(chain, "batch claimWithSignature (1 channel)", done["claims"][0].transaction)
    _gas(chain, "batch settle(receiver, token)", done["settle"].transaction)
    assert chainlib.balance_of(chain.rpc_url, asset, receiver) == receiver_before + calls * price

    refunds = manager.refund([payload.payload["voucher"]["channelId"]])
    assert len(refunds) == 1
    _gas(chain, "batch refundWithSignature", refunds[0].transaction)
    assert chainlib.balance_of(chain.rpc_url, asset, payer.address) == 5_000_000 - calls * price
    assert chain.tx_count(x402.signer.address) == facilitator_txs + 4
