"""Batch-settlement channels with the official SDK's own parts, for the claim e2e tests:
its facilitator (batch-settlement registered, on anvil), a resource server whose
batch-settlement scheme keeps channel state in the gateway's Redis channel storage, and its
payer client. No gateway process here: these are what the gateway's claim schedule meets.

Also: the SDK's sync facilitator behind the async client the claim schedule (and the
gateway) talk to, in a thread; and counting the batch-settlement contract's calls on chain.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass
from typing import Any

from eth_account.signers.local import LocalAccount
from web3 import Web3
from x402 import x402Client, x402FacilitatorSync, x402ResourceServerSync
from x402.mechanisms.evm.batch_settlement.abi import BATCH_SETTLEMENT_ABI
from x402.mechanisms.evm.batch_settlement.constants import BATCH_SETTLEMENT_ADDRESS
from x402.mechanisms.evm.batch_settlement.server import ChannelStorage
from x402.mechanisms.evm.batch_settlement.server.scheme import (
    BatchSettlementEvmScheme,
    BatchSettlementEvmSchemeServerConfig,
)
from x402.schemas import (
    PaymentPayload,
    PaymentRequirements,
    SettleResponse,
    SupportedResponse,
    VerifyResponse,
)
from x402.schemas.hooks import PaymentResponseContext

from gateway.demo import chain as chainlib
from gateway.demo import x402_sdk as sdk


class AsyncFacilitator:
    """The SDK's sync facilitator as the async client the gateway expects (a thread each)."""

    def __init__(self, facilitator: x402FacilitatorSync) -> None:
        self._facilitator = facilitator

    async def verify(
        self, payload: PaymentPayload, requirements: PaymentRequirements
    ) -> VerifyResponse:
        return await asyncio.to_thread(self._facilitator.verify, payload, requirements)

    async def settle(
        self, payload: PaymentPayload, requirements: PaymentRequirements
    ) -> SettleResponse:
        return await asyncio.to_thread(self._facilitator.settle, payload, requirements)

    def get_supported(self) -> SupportedResponse:
        return self._facilitator.get_supported()


@dataclass
class ChannelRig:
    """A facilitator (`signer` sends its transactions), and a resource server for `receiver`
    selling in `token` at `price`, its channels in `storage`."""

    facilitator: x402FacilitatorSync
    signer_address: str
    server: x402ResourceServerSync
    requirements: PaymentRequirements

    def pay(self, payload: PaymentPayload) -> SettleResponse:
        """What a server does per request: verify, (serve), settle."""
        verified = self.server.verify_payment(payload, self.requirements)
        assert verified.is_valid, verified.verify
        settled = self.server.settle_payment(payload, self.requirements)
        assert settled.success, settled
        return settled


def funded_key(rpc_url: str) -> str:
    """A fresh key holding test ETH (set by anvil: no transaction), for a facilitator."""
    account = chainlib.new_account()
    chainlib.rpc_call(rpc_url, "anvil_setBalance", [account.address, hex(10**20)])
    return "0x" + bytes(account.key).hex()


def build_rig(
    *,
    rpc_url: str,
    network: str,
    facilitator_key: str,
    authorizer_key: str,
    receiver: str,
    token: str,
    price: int,
    storage: ChannelStorage,
    min_deposit: int = 1_000_000,  # $1.00, as a route's `channel: {min_deposit: "$1.00"}`
    claim_payout: bool = False,  # claims pay out in the same transaction (our facilitators)
) -> ChannelRig:
    facilitator, signer = sdk.build_facilitator(
        rpc_url, network, facilitator_key, authorizer_key, claim_payout=claim_payout
    )
    server = x402ResourceServerSync(facilitator)
    scheme: Any = BatchSettlementEvmScheme(
        receiver, BatchSettlementEvmSchemeServerConfig(storage=storage, withdraw_delay=900)
    )
    server.register(network, scheme)
    server.initialize()
    requirements = sdk.build_requirements(
        server,
        scheme=sdk.BATCH,
        network=network,
        asset=token,
        amount=price,
        pay_to=receiver,
        extra={**sdk.eip3009_extra("USD Coin", "2"), "minDeposit": str(min_deposit)},
    )
    return ChannelRig(facilitator, signer.address, server, requirements)


async def call_once(rig: ChannelRig, client: x402Client) -> str:
    """One paid call: the client's deposit or voucher, through the server; its kind."""
    payload = await sdk.sign_payment(client, rig.requirements)
    settled = rig.pay(payload)
    await client.handle_payment_response(
        PaymentResponseContext(
            payment_payload=payload, requirements=rig.requirements, settle_response=settled
        )
    )
    return str(payload.payload["type"])


def payer_client(account: LocalAccount, rpc_url: str, network: str, token: str) -> x402Client:
    return sdk.make_payer_client(account, rpc_url, [(network, token)])


def contract_calls(rpc_url: str, from_block: int) -> Counter[str]:
    """The batch-settlement contract's functions called by mined transactions since
    `from_block` (deposits arrive through a collector: `deposit` here too)."""
    w3 = chainlib.web3_for(rpc_url)
    contract = w3.eth.contract(address=BATCH_SETTLEMENT_ADDRESS, abi=BATCH_SETTLEMENT_ABI)
    calls: Counter[str] = Counter()
    for number in range(from_block, w3.eth.block_number + 1):
        for tx in w3.eth.get_block(number, full_transactions=True)["transactions"]:
            if tx["to"] != Web3.to_checksum_address(BATCH_SETTLEMENT_ADDRESS):
                continue
            function, _args = contract.decode_function_input(tx["input"])
            calls[function.fn_name] += 1
    return calls
