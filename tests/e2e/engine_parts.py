"""Real parts for the settlement engine's end-to-end tests: fresh settler keys funded with
test ETH, payments signed by the SDK's client, extra anvils, and the on-chain count that
decides every money test (transfers read from the token's logs, never from the engine)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from eth_account import Account
from eth_account.signers.local import LocalAccount
from x402.mechanisms.evm.exact.eip3009_utils import ERC20_TRANSFER_EVENT_TOPIC
from x402.schemas import PaymentPayload, PaymentRequirements, SettleResponse

from gateway.demo import chain as chainlib
from gateway.demo.payer import authorization_of, make_x402_client, sign_requirements
from gateway.facilitators.engine import EngineFacilitator, EngineOptions, Observer

BANK = chainlib.ANVIL_KEYS[9]  # pays the settlers' gas money; nothing else sends from it
GAS_MONEY = 10**18


def settler_keys(rpc_url: str, n: int) -> tuple[str, ...]:
    """`n` fresh keys holding test ETH (a settler pays gas), used by no other test."""
    keys = []
    for _ in range(n):
        account = chainlib.new_account()
        chainlib.fund_eth(rpc_url, BANK, account.address, GAS_MONEY)
        keys.append("0x" + bytes(account.key).hex())
    return tuple(keys)


def address_of(key: str) -> str:
    address: str = Account.from_key(key).address
    return address


def options(rpc_url: str, keys: tuple[str, ...], **changes: Any) -> EngineOptions:
    fields: dict[str, Any] = {
        "chain_id": chainlib.BASE_SEPOLIA_CHAIN_ID,
        "poll_interval": 0.05,
        "confirmation_timeout": 30.0,
    }
    fields.update(changes)
    return EngineOptions(rpc_url=rpc_url, keys=keys, **fields)


@contextlib.asynccontextmanager
async def engine(
    rpc_url: str, keys: tuple[str, ...], observer: Observer | None = None, **changes: Any
) -> AsyncIterator[EngineFacilitator]:
    async with EngineFacilitator(options(rpc_url, keys, **changes), observer=observer) as e:
        yield e


def requirements(
    local: chainlib.LocalChain, pay_to: str, amount: int = 1000
) -> PaymentRequirements:
    return PaymentRequirements(
        scheme="exact",
        network=local.network,
        asset=local.token,
        amount=str(amount),
        pay_to=pay_to,
        max_timeout_seconds=300,
        extra={"name": "USD Coin", "version": "2"},
    )


async def sign(
    local: chainlib.LocalChain, payer: LocalAccount, req: PaymentRequirements
) -> PaymentPayload:
    """A payment made by the SDK's own client for exactly `req`."""
    return await sign_requirements(make_x402_client(payer, [(local.network, local.token)]), req)


async def fresh_payments(
    local: chainlib.LocalChain, req: PaymentRequirements, n: int, balance: int = 1_000_000
) -> list[PaymentPayload]:
    payers = await asyncio.to_thread(lambda: [local.new_payer(balance) for _ in range(n)])
    return [await sign(local, p, req) for p in payers]


def rpc(rpc_url: str, method: str, *params: Any) -> Any:
    return chainlib.rpc_call(rpc_url, method, list(params))


@dataclass(frozen=True)
class Transfer:
    payer: str
    to: str
    value: int
    tx: str


def transfers_to(local: chainlib.LocalChain, pay_to: str, from_block: int = 0) -> list[Transfer]:
    """Every token Transfer to `pay_to` on the canonical chain, from the node's logs."""
    logs = rpc(
        local.rpc_url,
        "eth_getLogs",
        {
            "address": local.token,
            "fromBlock": hex(from_block),
            "toBlock": "latest",
            "topics": [ERC20_TRANSFER_EVENT_TOPIC, None, "0x" + "00" * 12 + pay_to[2:].lower()],
        },
    )
    found = [
        Transfer(
            "0x" + log["topics"][1][-40:],
            "0x" + log["topics"][2][-40:],
            int(log["data"], 16),
            log["transactionHash"],
        )
        for log in logs
    ]
    return [t for t in found if int(t.payer, 16) != 0]


def assert_settled_exactly(
    local: chainlib.LocalChain,
    pay_to: str,
    payments: Sequence[PaymentPayload],
    results: Sequence[SettleResponse],
    amount: int,
) -> None:
    """The money test: one transfer per success (in the transaction it names), none for a
    failure, and each failed authorization still unused."""
    transfers = transfers_to(local, pay_to)
    by_payer = {t.payer: t for t in transfers}
    assert len(by_payer) == len(transfers), "a payer was charged twice"
    for payment, result in zip(payments, results, strict=True):
        auth = authorization_of(payment)
        payer = auth["from"].lower()
        used = chainlib.authorization_state(local.rpc_url, local.token, auth["from"], auth["nonce"])
        if result.success:
            assert used, f"{payer}: told settled, authorization unused"
            assert by_payer[payer].value == amount
            assert by_payer[payer].tx == result.transaction
        else:
            assert not used, f"{payer}: told {result.error_reason}, but charged"
            assert payer not in by_payer
    assert sum(r.success for r in results) == len(transfers)
    assert local.balance_of(pay_to) == amount * len(transfers)


@contextlib.contextmanager
def extra_chain(block_time: float | None = None) -> Iterator[chainlib.LocalChain]:
    """A chain of its own (reorgs and manual mining must not touch the session chain).
    With `block_time`, it also mines on demand until `blocks_only()` (so setting up the
    token, the settlers and the payers does not wait a block per transaction)."""
    anvil = chainlib.start_anvil(block_time=block_time)
    try:
        if block_time is not None:
            rpc(anvil.rpc_url, "evm_setAutomine", True)
        yield chainlib.prepare_chain(anvil.rpc_url)
    finally:
        anvil.stop()


def blocks_only(local: chainlib.LocalChain, block_time: int) -> None:
    """From now on, a block every `block_time` seconds and no other (as `--block-time`)."""
    rpc(local.rpc_url, "evm_setAutomine", False)
    rpc(local.rpc_url, "evm_setIntervalMining", block_time)


def receipt(rpc_url: str, tx: str) -> dict[str, Any] | None:
    found: dict[str, Any] | None = rpc(rpc_url, "eth_getTransactionReceipt", tx)
    return found


def gas_used(rpc_url: str, tx: str) -> int:
    found = receipt(rpc_url, tx)
    assert found is not None
    return int(found["gasUsed"], 16)
