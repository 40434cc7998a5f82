"""The official SDK's parts for `exact` (EIP-3009 and Permit2), `upto` and `batch-settlement`,
wired for a local chain: one facilitator with every scheme, a resource server that builds the
requirements a real server would, and a payer client that can pay all of them.

This is the recipe the gateway's features follow; the e2e test `tests/e2e/test_x402_contracts.py`
runs it end to end on anvil. Everything here is blocking (the SDK's sync facilitator, web3):
from async code call it in a thread pool. Never on the request path.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_account.typed_transactions.typed_transaction import TypedTransaction
from hexbytes import HexBytes
from web3 import Web3
from x402 import x402Client, x402FacilitatorSync, x402ResourceServerSync
from x402.extensions.erc20_approval_gas_sponsoring import (
    Erc20ApprovalFacilitatorExtension,
    TransactionRequest,
    WriteContractCall,
)
from x402.mechanisms.evm import FacilitatorWeb3Signer
from x402.mechanisms.evm.batch_settlement.authorizer_signer import LocalAuthorizerSigner
from x402.mechanisms.evm.batch_settlement.client.scheme import (
    BatchSettlementEvmScheme as BatchSettlementClientScheme,
)
from x402.mechanisms.evm.batch_settlement.facilitator.scheme import BatchSettlementEvmFacilitator
from x402.mechanisms.evm.batch_settlement.server.scheme import (
    BatchSettlementEvmScheme as BatchSettlementServerScheme,
)
from x402.mechanisms.evm.batch_settlement.server.scheme import (
    BatchSettlementEvmSchemeServerConfig,
)
from x402.mechanisms.evm.exact import register_exact_evm_client, register_exact_evm_facilitator
from x402.mechanisms.evm.exact.server import ExactEvmScheme as ExactServerScheme
from x402.mechanisms.evm.signer import FacilitatorEvmSigner
from x402.mechanisms.evm.signers import EthAccountSignerWithRPC
from x402.mechanisms.evm.upto import (
    UptoEvmClientScheme,
    UptoEvmFacilitatorScheme,
    UptoEvmServerScheme,
)
from x402.schemas import (
    AssetAmount,
    PaymentPayload,
    PaymentRequired,
    PaymentRequirements,
    ResourceConfig,
    ResourceInfo,
)

from gateway.facilitators.claim_payout import ClaimPayoutSigner

EXACT = "exact"
UPTO = "upto"
BATCH = "batch-settlement"


class SponsoringSigner:
    """The `erc20ApprovalGasSponsoring` extension signer the SDK leaves to the operator.

    The payer signed `approve(Permit2, max)` but holds no ETH: we send it exactly the gas
    that transaction may burn, broadcast it, then run the settlement call with the
    facilitator's own signer, one after the other (the SDK accepts a sequence of hashes).
    """

    def __init__(self, signer: FacilitatorWeb3Signer, private_key: str, rpc_url: str) -> None:
        self._signer = signer
        self._account = Account.from_key(private_key)
        self._w3 = Web3(Web3.HTTPProvider(rpc_url))

    def __getattr__(self, name: str) -> Any:
        # Everything else (reads, receipts, addresses) is the facilitator signer's.
        return getattr(self._signer, name)

    def send_transactions(self, transactions: list[TransactionRequest]) -> list[str]:
        hashes: list[str] = []
        for tx in transactions:
            if isinstance(tx, WriteContractCall):
                hashes.append(self._write(tx))
            else:
                hashes.append(self._sponsor_and_broadcast(tx))
        return hashes

    def wait_for_transaction_receipt(self, tx_hash: str) -> Any:
        return self._signer.wait_for_transaction_receipt(tx_hash)

    def _write(self, call: WriteContractCall) -> str:
        tx_hash: str = self._signer.write_contract(
            call.address, call.abi, call.function, *call.args, data_suffix=call.data_suffix
        )
        self._signer.wait_for_transaction_receipt(tx_hash)
        return tx_hash

    def _sponsor_and_broadcast(self, raw_hex: str) -> str:
        raw = bytes.fromhex(raw_hex.removeprefix("0x"))
        sender = Account.recover_transaction(raw)
        if raw[0] >= 0x80:  # the SDK's client signs EIP-1559 (type 2) approvals only
            raise ValueError("expected a typed (EIP-2718) approval transaction")
        fields = TypedTransaction.from_bytes(HexBytes(raw)).as_dict()
        fee = int(fields["maxFeePerGas"])
        needed = int(fields["gas"]) * fee - int(self._w3.eth.get_balance(sender))
        if needed > 0:
            self._send_own({"to": sender, "value": needed, "gas": 21_000})
        tx_hash = self._w3.eth.send_raw_transaction(raw)
        self._w3.eth.wait_for_transaction_receipt(tx_hash)
        return "0x" + bytes(tx_hash).hex()

    def _send_own(self, tx: dict[str, Any]) -> None:
        w3 = self._w3
        tx = {**tx, "from": self._account.address, "chainId": w3.eth.chain_id}
        tx["nonce"] = w3.eth.get_transaction_count(self._account.address, "pending")
        tx["gasPrice"] = w3.eth.gas_price
        signed = self._account.sign_transaction(tx)
        w3.eth.wait_for_transaction_receipt(w3.eth.send_raw_transaction(signed.raw_transaction))


@dataclass
class LocalX402:
    """One facilitator (exact incl. Permit2 + gas sponsoring, upto, batch-settlement) and a
    resource server over it, on one network."""

    facilitator: x402FacilitatorSync
    signer: FacilitatorWeb3Signer
    server: x402ResourceServerSync
    network: str
    batch_servers: dict[str, BatchSettlementServerScheme] = field(default_factory=dict)


def build_facilitator(
    rpc_url: str,
    network: str,
    facilitator_key: str,
    authorizer_key: str,
    *,
    claim_payout: bool = False,
) -> tuple[x402FacilitatorSync, FacilitatorWeb3Signer]:
    """The SDK's sync facilitator with every EVM scheme this chain has contracts for.

    `authorizer_key` signs the batch-settlement `claimWithSignature`/`refundWithSignature`
    digests; its address is advertised as `receiverAuthorizer` in /supported (`extra`).
    `claim_payout`: its batch-settlement claims also pay the receiver out, in the same
    transaction, as the gateway's own facilitators do (gateway/facilitators/claim_payout.py).
    """
    signer = FacilitatorWeb3Signer(private_key=facilitator_key, rpc_url=rpc_url)
    facilitator = x402FacilitatorSync()
    register_exact_evm_facilitator(facilitator, signer, [network])
    facilitator.register([network], UptoEvmFacilitatorScheme(signer))
    batch_signer: FacilitatorEvmSigner = ClaimPayoutSigner(signer) if claim_payout else signer
    facilitator.register(
        [network],
        BatchSettlementEvmFacilitator(
            batch_signer, authorizer_signer=LocalAuthorizerSigner(authorizer_key)
        ),
    )
    sponsor = SponsoringSigner(signer, facilitator_key, rpc_url)
    # The SDK's extension class matches its FacilitatorExtension protocol only by duck typing.
    extension: Any = Erc20ApprovalFacilitatorExtension(signer=sponsor)
    facilitator.register_extension(extension)
    return facilitator, signer


def build_local_x402(  # noqa: PLR0913  the chain, its two keys, and keyword-only options
    rpc_url: str,
    network: str,
    facilitator_key: str,
    authorizer_key: str,
    *,
    batch_receivers: Sequence[str] = (),
    withdraw_delay: int = 900,
) -> LocalX402:
    """Facilitator + a resource server registered for exact, upto and (per receiver)
    batch-settlement, initialized against that facilitator (its /supported, in process)."""
    facilitator, signer = build_facilitator(rpc_url, network, facilitator_key, authorizer_key)
    server = x402ResourceServerSync(facilitator)
    # The SDK's scheme classes are untyped and declare `payment_flows` more loosely than its
    # SchemeNetworkServer protocol: Any keeps mypy --strict honest about where that is.
    exact: Any = ExactServerScheme()  # type: ignore[no-untyped-call]
    upto: Any = UptoEvmServerScheme()  # type: ignore[no-untyped-call]
    server.register(network, exact)
    server.register(network, upto)
    batch: dict[str, BatchSettlementServerScheme] = {}
    for receiver in batch_receivers:
        scheme = BatchSettlementServerScheme(
            receiver, BatchSettlementEvmSchemeServerConfig(withdraw_delay=withdraw_delay)
        )
        batch[Web3.to_checksum_address(receiver)] = scheme
        registered: Any = scheme
        server.register(network, registered)
    server.initialize()
    return LocalX402(facilitator, signer, server, network, batch)


def build_requirements(  # noqa: PLR0913  every field of a requirement, keyword-only
    server: x402ResourceServerSync,
    *,
    scheme: str,
    network: str,
    asset: str,
    amount: int,
    pay_to: str,
    extra: dict[str, Any] | None = None,
    max_timeout_seconds: int = 300,
) -> PaymentRequirements:
    """Requirements as the SDK's server scheme builds them for a price in atomic units of
    `asset` (it adds its own `extra`, e.g. receiverAuthorizer/withdrawDelay for channels)."""
    config = ResourceConfig(
        scheme=scheme,
        network=network,
        pay_to=pay_to,
        price=AssetAmount(amount=str(amount), asset=asset, extra=extra or {}),
        max_timeout_seconds=max_timeout_seconds,
    )
    requirements = server.build_payment_requirements(config)
    return requirements[0]


def permit2_extra() -> dict[str, Any]:
    """`extra` for a token paid through Permit2 (no EIP-712 domain: the token has none)."""
    return {"assetTransferMethod": "permit2"}


def eip3009_extra(name: str, version: str) -> dict[str, Any]:
    """`extra` for an EIP-3009 token: its EIP-712 domain name and version."""
    return {"name": name, "version": version}


def make_payer_client(
    account: LocalAccount, rpc_url: str, assets: Sequence[tuple[str, str]] = ()
) -> x402Client:
    """The SDK's payer client for `account`, able to pay exact (EIP-3009 and Permit2, with
    the gas-sponsoring extensions: its signer reads allowances and signs transactions),
    upto and batch-settlement; allowed to pay in the given (network, token) pairs."""
    signer = EthAccountSignerWithRPC(account, rpc_url)
    client = x402Client()
    register_exact_evm_client(client, signer)
    client.register("eip155:*", UptoEvmClientScheme(signer))
    client.register("eip155:*", BatchSettlementClientScheme(signer))
    if assets:
        client.set_spend_controls(
            {"allowed_assets": [{"network": n, "asset": a} for n, a in assets]}
        )
    return client


async def sign_payment(
    client: x402Client,
    requirements: PaymentRequirements,
    extensions: dict[str, Any] | None = None,
    resource_url: str = "http://local/",
) -> PaymentPayload:
    """What the client sends for a 402 that offers `requirements` (and declares
    `extensions`, e.g. `declare_erc20_approval_gas_sponsoring_extension()`)."""
    challenge = PaymentRequired(
        resource=ResourceInfo(url=resource_url), accepts=[requirements], extensions=extensions
    )
    payload = await client.create_payment_payload(challenge)
    if not isinstance(payload, PaymentPayload):
        raise TypeError(f"expected a v2 payload, got {type(payload).__name__}")
    return payload
