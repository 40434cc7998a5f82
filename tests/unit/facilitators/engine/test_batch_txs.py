"""Calldata, batch planning, receipts read per payment, and the reorg decisions."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from eth_abi.abi import decode, encode
from x402.mechanisms.evm.constants import ERR_TRANSACTION_FAILED, ERR_TRANSFER_EVENT_MISMATCH
from x402.mechanisms.evm.exact.eip3009_utils import ERC20_TRANSFER_EVENT_TOPIC

from gateway.facilitators.engine import calls
from gateway.facilitators.engine.batch import Collector, chunks, transaction_for
from gateway.facilitators.engine.fees import Fees
from gateway.facilitators.engine.options import MULTICALL3_ADDRESS
from gateway.facilitators.engine.signer import SettlerKey, SignedTx
from gateway.facilitators.engine.txs import (
    Inclusion,
    Kind,
    Outcome,
    Payment,
    Recheck,
    Tracked,
    is_final,
    missing,
    nonce_taken,
    outcomes,
    recheck,
    reorged,
)
from gateway.payment import eip3009
from tests.unit.facilitators.engine.helpers import TOKEN, account, eth_account_signed

TOKEN_L = TOKEN.lower()


def auth() -> eip3009.Authorization:
    return eip3009.parse(eth_account_signed(account()))


def payment(a: eip3009.Authorization | None = None) -> Payment:
    a = a or auth()
    return Payment(a, TOKEN_L, calls.transfer_call(TOKEN_L, a, a.signature), _future())


def _future() -> asyncio.Future[Outcome]:
    """A future nobody awaits (these tests only read payments)."""
    loop = asyncio.new_event_loop()
    try:
        return loop.create_future()
    finally:
        loop.close()


def test_transfer_calldata_uses_vrs_for_65_bytes_and_bytes_otherwise() -> None:
    a = auth()
    call = calls.transfer_call(TOKEN_L, a, a.signature)
    assert call.target == TOKEN_L and call.data[:4] == calls.TRANSFER_VRS
    fields = decode(
        [
            "address",
            "address",
            "uint256",
            "uint256",
            "uint256",
            "bytes32",
            "uint8",
            "bytes32",
            "bytes32",
        ],
        call.data[4:],
    )
    assert fields[0].lower() == a.payer and fields[2] == a.value and fields[5] == a.nonce
    assert fields[6] in (27, 28) and fields[7] == a.signature[:32]
    yparity = a.signature[:64] + bytes([a.signature[64] - 27])
    assert (
        decode(["uint8"], calls.transfer_call(TOKEN_L, a, yparity).data[4 + 6 * 32 :][:32])[0]
        == a.signature[64]
    )  # 0/1 sent as 27/28, as the SDK does
    wallet = calls.transfer_call(TOKEN_L, a, b"\x01" * 100)
    assert wallet.data[:4] == calls.TRANSFER_BYTES
    assert (
        decode(
            ["address", "address", "uint256", "uint256", "uint256", "bytes32", "bytes"],
            wallet.data[4:],
        )[6]
        == b"\x01" * 100
    )


def test_try_aggregate_round_trip() -> None:
    inner = [calls.ContractCall(TOKEN_L, b"\x01\x02"), calls.ContractCall(TOKEN_L, b"")]
    call = calls.try_aggregate(MULTICALL3_ADDRESS, inner)
    assert call.data[:4] == calls.TRY_AGGREGATE
    require, decoded = decode(["bool", "(address,bytes)[]"], call.data[4:])
    assert require is False and [d[1] for d in decoded] == [b"\x01\x02", b""]
    answer = encode(["(bool,bytes)[]"], [[(True, b""), (False, b"\x08\xc3")]])
    assert calls.decode_try_aggregate(answer, 2) == [(True, b""), (False, b"\x08\xc3")]
    with pytest.raises(ValueError):
        calls.decode_try_aggregate(answer, 3)
    with pytest.raises(ValueError):
        calls.decode_try_aggregate(b"\x00" * 7, 1)


def test_revert_messages() -> None:
    error = calls.ERROR_STRING + encode(["string"], ["FiatTokenV2: invalid signature"])
    assert calls.revert_message(error) == "FiatTokenV2: invalid signature"
    assert calls.revert_message(calls.PANIC + encode(["uint256"], [0x11])) == "panic 0x11"
    assert calls.revert_message(b"") == "reverted without a reason"
    assert calls.revert_message(b"\xde\xad") == "0xdead"
    assert calls.revert_message(calls.ERROR_STRING + b"\x00") == "0x08c379a000"
    assert (
        calls.revert_text("execution reverted: X", calls.ERROR_STRING + encode(["string"], ["X"]))
        == "execution reverted: X"
    )
    assert calls.revert_text("execution reverted", error).endswith("invalid signature")


def _word(value: int) -> str:
    return "0x" + value.to_bytes(32, "big").hex()


def _topic(address: str) -> str:
    return "0x" + "00" * 12 + address[2:]


def logs_for(a: eip3009.Authorization, token: str = TOKEN_L) -> list[dict[str, Any]]:
    return [
        {
            "address": token,
            "topics": [calls.AUTHORIZATION_USED_TOPIC, _topic(a.payer), a.nonce_hex],
            "data": "0x",
        },
        {
            "address": token,
            "topics": [ERC20_TRANSFER_EVENT_TOPIC, _topic(a.payer), _topic(a.to)],
            "data": _word(a.value),
        },
    ]


def test_a_payment_is_settled_only_by_its_own_authorization_and_transfer() -> None:
    a, b = auth(), auth()
    assert calls.authorization_used(logs_for(a), TOKEN_L, a)
    assert not calls.authorization_used(logs_for(b), TOKEN_L, a)
    assert not calls.authorization_used(logs_for(a, "0x" + "99" * 20), TOKEN_L, a)
    assert not calls.authorization_used(logs_for(a)[:1], TOKEN_L, a)  # no Transfer
    assert not calls.authorization_used(logs_for(a)[1:], TOKEN_L, a)  # no AuthorizationUsed
    assert not calls.authorization_used(["junk", {"address": 5}], TOKEN_L, a)


def tracked(payments: list[Payment], to: str) -> Tracked:
    key = SettlerKey("0x" + "11" * 32, 84532)
    signed = SignedTx(b"", "0x" + "aa" * 32, 0, Fees(1, 1), 100_000)
    return Tracked(key, 0, to, b"", payments, [signed])


def test_outcomes_from_a_receipt() -> None:
    p1, p2, p3 = payment(), payment(), payment()
    batch = tracked([p1, p2, p3], MULTICALL3_ADDRESS)
    receipt = {
        "transactionHash": "0xAB",
        "status": "0x1",
        "logs": logs_for(p1.auth) + logs_for(p3.auth),
    }
    got = outcomes(batch, receipt)
    assert [o.kind for o in got] == [Kind.SETTLED, Kind.FAILED, Kind.SETTLED]
    assert got[1].reason == ERR_TRANSACTION_FAILED and {o.transaction for o in got} == {"0xab"}
    reverted = outcomes(batch, {**receipt, "status": "0x0"})
    assert {(o.kind, o.reason) for o in reverted} == {(Kind.FAILED, ERR_TRANSACTION_FAILED)}
    direct = tracked([p2], TOKEN_L)
    assert outcomes(direct, receipt)[0].reason == ERR_TRANSFER_EVENT_MISMATCH


def test_reorg_decisions() -> None:
    inc = Inclusion("0xaa", 100, "0xb1")
    assert recheck(inc, None) is Recheck.DROPPED
    assert recheck(inc, {"blockHash": "0xB1"}) is Recheck.KEEP
    assert recheck(inc, {"blockHash": "0xb2"}) is Recheck.MOVED
    assert not reorged(None, None)
    assert not reorged((100, "0xb1"), {"hash": "0xB1"})
    assert reorged((100, "0xb1"), {"hash": "0xb2"})
    assert reorged((100, "0xb1"), None)  # the chain is shorter now
    assert not is_final(inc, 105, 6) and is_final(inc, 106, 6) and is_final(inc, 100, 0)
    t = tracked([payment()], TOKEN_L)
    assert not nonce_taken(t, 0.0, 10.0)
    for second in (0.0, 1.0, 2.0):
        missing(t, second)
    assert not nonce_taken(t, 9.9, 10.0)  # three polls, but not for long: a node serving late
    assert nonce_taken(t, 10.0, 10.0)


def test_a_batch_is_one_call_and_a_single_payment_goes_straight_to_the_token() -> None:
    p1, p2 = payment(), payment()
    assert transaction_for([p1], MULTICALL3_ADDRESS) is p1.call
    multi = transaction_for([p1, p2], MULTICALL3_ADDRESS)
    assert multi.target == MULTICALL3_ADDRESS and multi.data[:4] == calls.TRY_AGGREGATE
    with pytest.raises(ValueError):
        transaction_for([], MULTICALL3_ADDRESS)
    assert [len(c) for c in chunks([p1] * 7, 3)] == [3, 3, 1]


async def _collect(window: float, max_batch: int, count: int) -> list[int]:
    sizes: list[int] = []

    async def flush(batch: list[Payment]) -> None:
        sizes.append(len(batch))

    collector = Collector(window, max_batch, flush)
    loop = asyncio.get_running_loop()
    for _ in range(count):
        a = auth()
        collector.add(
            Payment(a, TOKEN_L, calls.transfer_call(TOKEN_L, a, a.signature), loop.create_future())
        )
    await collector.drain()
    return sizes


async def test_collector_batches_by_size_window_or_not_at_all() -> None:
    assert await _collect(0, 50, 3) == [1, 1, 1]  # off: each payment on its own
    assert await _collect(60, 4, 10) == [4, 4, 2]  # full batches leave at once, drain the rest
    sizes: list[int] = []

    async def flush(batch: list[Payment]) -> None:
        sizes.append(len(batch))

    collector = Collector(0.05, 50, flush)
    a = auth()
    collector.add(
        Payment(
            a,
            TOKEN_L,
            calls.transfer_call(TOKEN_L, a, a.signature),
            asyncio.get_running_loop().create_future(),
        )
    )
    for _ in range(200):  # the window closes on its own
        if sizes:
            break
        await asyncio.sleep(0.01)
    assert sizes == [1] and collector.waiting == 0
    await collector.cancel()
