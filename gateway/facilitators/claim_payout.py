"""Channel claims that pay the receiver in the same transaction (issue 14, claims).

The SDK's batch-settlement facilitator claims vouchers with `claimWithSignature` and pays the
claimed total out with a later, separate `settle(receiver, token)`: two transactions per
claim round, and the payee's token balance moves only at the second. The settlement contract
is an OpenZeppelin `Multicall` (`multicall(bytes[])` is in the SDK's own ABI), so both fit in
one transaction: the claim, then the payout of every (receiver, token) the claim names.

`ClaimPayoutSigner` wraps the facilitator's signer and sends the SDK's `claimWithSignature`
transaction as that multicall. Everything else stays the SDK's: the claim's simulation,
the authorizer's signature and address checks, the receipt and the response; deposits,
refunds and settles go through untouched. The multicall is simulated first; when it would
revert the plain claim is sent, as the SDK would (the real contract's `settle` returns quietly
when nothing is owed; the demo chain's stand-in reverts `NothingToSettle`, so there a claim that
moves nothing new goes alone). The schedule's later `settle` then finds nothing to settle and
sends nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from web3 import Web3
from web3.exceptions import Web3Exception
from x402.mechanisms.evm.batch_settlement.abi import (
    BATCH_SETTLEMENT_ABI,
    CHANNEL_CONFIG_COMPONENTS,
)
from x402.mechanisms.evm.signer import FacilitatorEvmSigner
from x402.mechanisms.evm.types import TransactionReceipt, TypedDataDomain, TypedDataField

CLAIM = "claimWithSignature"
_FIELDS = [component["name"] for component in CHANNEL_CONFIG_COMPONENTS]
_RECEIVER, _TOKEN = _FIELDS.index("receiver"), _FIELDS.index("token")


def payouts(claim_args: Sequence[Any]) -> list[tuple[str, str]]:
    """The (receiver, token) pairs a `claimWithSignature` argument list claims for, in
    first-seen order (each claim is ((channel config, max claimable), signature, total))."""
    pairs: dict[tuple[str, str], None] = {}
    for (config, _max), _signature, _total in claim_args:
        pairs[
            (Web3.to_checksum_address(config[_RECEIVER]), Web3.to_checksum_address(config[_TOKEN]))
        ] = None
    return list(pairs)


class ClaimPayoutSigner:
    """A `FacilitatorEvmSigner` whose `claimWithSignature` transaction also pays out."""

    def __init__(self, inner: FacilitatorEvmSigner) -> None:
        self._inner = inner
        self._contract = Web3().eth.contract(abi=BATCH_SETTLEMENT_ABI)

    def calls(self, claim_args: Sequence[Any], signature: bytes) -> list[bytes]:
        """The multicall's entries: the claim, then one payout per (receiver, token)."""
        encoded = [self._contract.encode_abi(CLAIM, args=[claim_args, signature])]
        encoded += [
            self._contract.encode_abi("settle", args=list(pair)) for pair in payouts(claim_args)
        ]
        return [bytes.fromhex(data.removeprefix("0x")) for data in encoded]

    def write_contract(
        self,
        address: str,
        abi: list[dict[str, Any]],
        function_name: str,
        *args: Any,
        data_suffix: str | None = None,
    ) -> str:
        if function_name == CLAIM and len(args) == 2:  # (claims, signature)
            calls = self.calls(args[0], args[1])
            try:
                self._inner.read_contract(address, BATCH_SETTLEMENT_ABI, "multicall", calls)
            except Web3Exception:  # it would revert (or the node refused it): the plain claim
                pass
            else:
                return self._inner.write_contract(
                    address, BATCH_SETTLEMENT_ABI, "multicall", calls, data_suffix=data_suffix
                )
        return self._inner.write_contract(
            address, abi, function_name, *args, data_suffix=data_suffix
        )

    # The rest of FacilitatorEvmSigner, unchanged.

    def get_addresses(self) -> list[str]:
        return self._inner.get_addresses()

    def read_contract(
        self, address: str, abi: list[dict[str, Any]], function_name: str, *args: Any
    ) -> Any:
        return self._inner.read_contract(address, abi, function_name, *args)

    def verify_typed_data(  # noqa: PLR0913, PLR0917  the protocol's signature
        self,
        address: str,
        domain: TypedDataDomain,
        types: dict[str, list[TypedDataField]],
        primary_type: str,
        message: dict[str, Any],
        signature: bytes,
    ) -> bool:
        return self._inner.verify_typed_data(
            address, domain, types, primary_type, message, signature
        )

    def send_transaction(self, to: str, data: bytes) -> str:
        return self._inner.send_transaction(to, data)

    def wait_for_transaction_receipt(self, tx_hash: str) -> TransactionReceipt:
        return self._inner.wait_for_transaction_receipt(tx_hash)

    def get_balance(self, address: str, token_address: str) -> int:
        return self._inner.get_balance(address, token_address)

    def get_chain_id(self) -> int:
        return self._inner.get_chain_id()

    def get_code(self, address: str) -> bytes:
        return self._inner.get_code(address)
