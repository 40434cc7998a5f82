"""The claim that pays out (gateway/facilitators/claim_payout.py): what it sends, and when it
falls back to the SDK's plain claim. A fake signer records the calls; the multicall's entries
are decoded with the SDK's own ABI."""

from __future__ import annotations

from typing import Any

import pytest
from web3 import Web3
from web3.exceptions import ContractLogicError
from x402.mechanisms.evm.batch_settlement.abi import BATCH_SETTLEMENT_ABI

from gateway.facilitators.claim_payout import ClaimPayoutSigner, payouts

CONTRACT = "0x4020074e5C7Bd5E9Bb6d94a1a1F4C6c5D7a0b001"
R1, R2 = "0x" + "11" * 20, "0x" + "22" * 20
TOKEN = "0x" + "33" * 20
SIG = b"\x01" * 65


def claim(receiver: str, salt: int, total: int) -> tuple[Any, ...]:
    config = (
        "0x" + "44" * 20,
        "0x" + "55" * 20,
        receiver,
        "0x" + "66" * 20,
        TOKEN,
        900,
        salt.to_bytes(32, "big"),
    )
    return ((config, total), SIG, total)


class FakeSigner:
    def __init__(self, *, multicall_reverts: bool = False) -> None:
        self.reads: list[tuple[str, tuple[Any, ...]]] = []
        self.writes: list[tuple[str, tuple[Any, ...], str | None]] = []
        self.multicall_reverts = multicall_reverts

    def read_contract(self, address: str, abi: Any, function_name: str, *args: Any) -> Any:
        self.reads.append((function_name, args))
        if function_name == "multicall" and self.multicall_reverts:
            raise ContractLogicError("execution reverted: NothingToSettle()")
        return []

    def write_contract(
        self, address: str, abi: Any, function_name: str, *args: Any, data_suffix: str | None = None
    ) -> str:
        self.writes.append((function_name, args, data_suffix))
        return "0x" + "ab" * 32


def decoded(data: bytes) -> tuple[str, dict[str, Any]]:
    contract = Web3().eth.contract(abi=BATCH_SETTLEMENT_ABI)
    function, args = contract.decode_function_input(data)
    return function.fn_name, args


def test_payouts_are_the_distinct_receiver_token_pairs_in_order() -> None:
    claims = [claim(R2, 1, 10), claim(R1, 2, 20), claim(R2, 3, 30)]
    assert payouts(claims) == [
        (Web3.to_checksum_address(R2), Web3.to_checksum_address(TOKEN)),
        (Web3.to_checksum_address(R1), Web3.to_checksum_address(TOKEN)),
    ]


def test_a_claim_is_sent_as_one_multicall_that_claims_then_pays_out() -> None:
    inner = FakeSigner()
    claims = [claim(R1, 1, 1000), claim(R2, 2, 2000)]
    tx = ClaimPayoutSigner(inner).write_contract(  # type: ignore[arg-type]
        CONTRACT, BATCH_SETTLEMENT_ABI, "claimWithSignature", claims, SIG, data_suffix="0xbeef"
    )
    assert tx == "0x" + "ab" * 32
    [(name, args, suffix)] = inner.writes
    assert (name, suffix) == ("multicall", "0xbeef")
    assert [call[0] for call in inner.reads] == ["multicall"]  # simulated before it is sent
    entries = [decoded(data) for data in args[0]]
    assert [fn for fn, _ in entries] == ["claimWithSignature", "settle", "settle"]
    assert entries[0][1]["authorizerSignature"] == SIG
    assert len(entries[0][1]["voucherClaims"]) == 2
    paid = [(a["receiver"], a["token"]) for fn, a in entries[1:]]
    assert paid == [
        (Web3.to_checksum_address(r), Web3.to_checksum_address(TOKEN)) for r in (R1, R2)
    ]


def test_a_multicall_that_would_revert_falls_back_to_the_sdks_plain_claim() -> None:
    inner = FakeSigner(multicall_reverts=True)
    claims = [claim(R1, 1, 1000)]
    ClaimPayoutSigner(inner).write_contract(  # type: ignore[arg-type]
        CONTRACT, BATCH_SETTLEMENT_ABI, "claimWithSignature", claims, SIG
    )
    assert [(name, args) for name, args, _ in inner.writes] == [
        ("claimWithSignature", (claims, SIG))
    ]


@pytest.mark.parametrize("function", ["settle", "deposit", "refundWithSignature"])
def test_other_transactions_go_through_untouched(function: str) -> None:
    inner = FakeSigner()
    ClaimPayoutSigner(inner).write_contract(  # type: ignore[arg-type]
        CONTRACT, BATCH_SETTLEMENT_ABI, function, R1, TOKEN
    )
    assert [(name, args) for name, args, _ in inner.writes] == [(function, (R1, TOKEN))]
    assert inner.reads == []
