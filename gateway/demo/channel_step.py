"""The demo's payment-channel step (issue 14): pay once, call many.

The SDK's own batch-settlement client deposits once on chain, then pays each of 100 calls
with an off-chain voucher that the gateway checks in process: the chain is read before and
after, and exactly one transaction (the deposit) was mined meanwhile. The gateway's claim
schedule then claims the 100 vouchers and pays the payee out in ONE transaction (the
contract's `multicall`: `claimWithSignature` + `settle`; `channels: {claim_over: "$0.10"}` in
config/demo.yaml makes it claim at once).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
from eth_account import Account
from eth_account.signers.local import LocalAccount
from web3 import Web3
from x402.client_base import prefer_scheme
from x402.http.clients.httpx import x402HttpxClient
from x402.http.utils import decode_payment_required_header, decode_payment_response_header
from x402.mechanisms.evm.batch_settlement import (
    BATCH_SETTLEMENT_ADDRESS,
    ERC3009_DEPOSIT_COLLECTOR_ADDRESS,
)
from x402.mechanisms.evm.batch_settlement.abi import BATCH_SETTLEMENT_ABI

from .chain import LocalChain, balance_of, block_number, rpc_call
from .stack import PAYER_KEY, Stack
from .terminal import Printer, usd
from .x402_sdk import BATCH, make_payer_client

WEATHER_PATH = "/api/weather/lisbon"
CALLS = 100
DECIMALS = 6
CLAIM_WAIT = 30.0  # the schedule reads the channels every 5 s


def mined(rpc_url: str, first: int, last: int) -> list[tuple[str, str, int]]:
    """(transaction hash, what it did, gas used) for every transaction in blocks first..last."""
    batch = Web3().eth.contract(address=BATCH_SETTLEMENT_ADDRESS, abi=BATCH_SETTLEMENT_ABI)
    found: list[tuple[str, str, int]] = []
    for number in range(first, last + 1):
        block = rpc_call(rpc_url, "eth_getBlockByNumber", [hex(number), True])
        for tx in block["transactions"]:
            to = Web3.to_checksum_address(tx["to"]) if tx.get("to") else ""
            if to == ERC3009_DEPOSIT_COLLECTOR_ADDRESS:
                what = "deposit"
            elif to == BATCH_SETTLEMENT_ADDRESS:
                what = _function(batch, tx["input"])
            else:
                what = f"a call to {to}"
            receipt = rpc_call(rpc_url, "eth_getTransactionReceipt", [tx["hash"]])
            found.append((tx["hash"], what, int(receipt["gasUsed"], 16)))
    return found


def _function(batch: Any, data: str) -> str:
    """The contract function a call data names; a multicall's inner ones, joined by " + "."""
    function, args = batch.decode_function_input(data)
    if function.fn_name != "multicall":
        return str(function.fn_name)
    return " + ".join(_function(batch, "0x" + bytes(inner).hex()) for inner in args["data"])


async def _calls(url: str, chain: LocalChain) -> tuple[list[int], list[str]]:
    account: LocalAccount = Account.from_key(PAYER_KEY)
    client = make_payer_client(account, chain.rpc_url, [(chain.network, chain.token)])
    client.register_policy(prefer_scheme(BATCH))
    statuses: list[int] = []
    kinds: list[str] = []
    async with x402HttpxClient(client, timeout=30) as http:
        for _ in range(CALLS):
            answer = await http.get(url)
            statuses.append(answer.status_code)
            receipt = answer.headers.get("PAYMENT-RESPONSE")
            settled = decode_payment_response_header(receipt) if receipt else None
            kinds.append("deposit" if settled is not None and settled.transaction else "voucher")
    return statuses, kinds


def _offered(out: Printer, http: httpx.Client) -> bool:
    challenge = http.get(WEATHER_PATH)
    header = challenge.headers.get("PAYMENT-REQUIRED")
    offers = decode_payment_required_header(header).accepts if header else []
    schemes = [offer.scheme for offer in offers]
    return out.check(
        challenge.status_code == 402 and BATCH in schemes,
        f"402 offering {' and '.join(schemes)}: a channel, or pay per call",
        f"expected a 402 offering {BATCH}, got {challenge.status_code} {schemes}",
    )


def channel_step(out: Printer, http: httpx.Client, stack: Stack, chain: LocalChain) -> None:
    """Step 6, printed and checked."""
    out.heading(6, "Pay once, call many: a payment channel (batch-settlement)")
    out.request("GET", f"{http.base_url}{WEATHER_PATH}", "no payment header")
    if not _offered(out, http):
        return
    price = 1000  # $0.001, the route's price
    payee_before = balance_of(chain.rpc_url, chain.token, stack.payee)
    first = block_number(chain.rpc_url) + 1
    out.note(f"the SDK's batch-settlement client makes {CALLS} paid calls")
    started = time.perf_counter()
    statuses, kinds = asyncio.run(_calls(f"{http.base_url}{WEATHER_PATH}", chain))
    elapsed = time.perf_counter() - started
    during = mined(chain.rpc_url, first, block_number(chain.rpc_url))
    out.field("calls", f"{CALLS} in {elapsed:.1f} s: {statuses.count(200)} answered 200")
    out.field("payments", f"{kinds.count('deposit')} deposit, {kinds.count('voucher')} vouchers")
    for tx_hash, what, gas in during:
        out.field("mined", f"{what}  {tx_hash}  ({gas:,} gas)")
    out.check(
        statuses == [200] * CALLS and kinds == ["deposit"] + ["voucher"] * (CALLS - 1),
        f"{CALLS} x 200: one deposit, then a voucher per call",
        f"statuses {sorted(set(statuses))}, payments {kinds[:3]}...",
    )
    out.check(
        [what for _, what, _ in during] == ["deposit"],
        f"one transaction on chain for {CALLS} calls (the deposit): no per-call transaction",
        f"mined during the calls: {during}",
    )
    deposit_gas = sum(gas for _, _, gas in during)
    _claimed(out, stack, chain, first + len(during), (payee_before, CALLS * price, deposit_gas))


def _claimed(
    out: Printer, stack: Stack, chain: LocalChain, first: int, money: tuple[int, int, int]
) -> None:
    """`money`: the payee's balance before the calls, what the vouchers owe it, and the gas
    the deposit used."""
    before, owed, deposit_gas = money
    out.note("the gateway's claim schedule claims the vouchers (channels.claim_over: $0.10)")
    deadline = time.monotonic() + CLAIM_WAIT
    payee = before
    while payee == before and time.monotonic() < deadline:
        time.sleep(0.25)
        payee = balance_of(chain.rpc_url, chain.token, stack.payee)
    after: list[Any] = mined(chain.rpc_url, first, block_number(chain.rpc_url))
    for tx_hash, what, gas in after:
        out.field("mined", f"{what}  {tx_hash}  ({gas:,} gas)")
    out.field("payee", f"{usd(before, DECIMALS)} -> {usd(payee, DECIMALS)}")
    gas = deposit_gas + sum(gas for _, _, gas in after)
    out.field(
        "gas", f"{gas:,} for {CALLS} calls (deposit + claim with payout): {gas // CALLS:,} per call"
    )
    out.check(
        [what for _, what, _ in after] == ["claimWithSignature + settle"],
        f"one transaction claims the {CALLS} vouchers and pays the payee out",
        f"mined after the calls: {after}",
    )
    out.check(
        payee - before == owed,
        f"the payee received exactly {usd(owed, DECIMALS)} ({CALLS} x $0.001)",
        f"the payee received {usd(payee - before, DECIMALS)}, expected {usd(owed, DECIMALS)}",
    )
