"""The claim schedule inside real `x402-gateway` processes (issue 14): the SDK's own Python
batch-settlement client pays over HTTP, the gateway verifies vouchers locally and its
background schedule claims them through a facilitator over HTTP, on anvil with the
x402 contracts; channel state in a real redis-server. Counted on chain.

The gateways hold their own receiver authorizer (`channels.authorizer_key`, a fresh key that
never sends); the session facilitator (anvil #1, `x402-gateway`'s own: a claim pays the
receiver out in the same transaction) sends the deposit and the claim.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
import subprocess
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis as sync_redis
import yaml
from eth_account import Account
from eth_account.signers.local import LocalAccount
from web3 import Web3
from x402 import x402Client
from x402.client_base import prefer_scheme
from x402.http.clients.httpx import PaymentError as ClientPaymentError
from x402.http.clients.httpx import x402HttpxClient
from x402.mechanisms.evm.batch_settlement import (
    BATCH_SETTLEMENT_ADDRESS,
    ERC3009_DEPOSIT_COLLECTOR_ADDRESS,
)
from x402.mechanisms.evm.batch_settlement.abi import BATCH_SETTLEMENT_ABI
from x402.mechanisms.evm.batch_settlement.errors import ERR_INVALID_VOUCHER_SIGNATURE

from gateway.demo import chain as chainlib
from gateway.demo import x402_sdk as sdk
from gateway.payment.channel_terms import voucher_nonce
from gateway.payment.recovery import claim_key
from gateway.store.channels import RedisChannelStorage
from gateway.store.redis import RedisStore
from tests.e2e.conftest import Chain
from tests.e2e.fault_parts import gateway_config
from tests.e2e.gateway_proc import GATEWAY, GatewayProcess, Origin
from tests.e2e.test_channels import header_of, payment_required
from tests.procs import RedisServer
from tests.unit.payment.test_channel_terms import recoded

pytestmark = pytest.mark.e2e

PRICE = 1_000  # $0.001 in the test USDC


@pytest.fixture
def db(redis: RedisServer) -> str:
    """A database of its own on the session's redis-server: only this test's channels."""
    url = redis.url.rsplit("/", 1)[0] + "/5"
    client = sync_redis.Redis.from_url(url)
    client.flushdb()
    client.close()
    return url


def config(
    chain: Chain, origin: Origin, pay_to: str, facilitator_url: str, store: str, **channels: str
) -> dict[str, Any]:
    routes = [{"path": "/paid/*", "price": "$0.001", "channel": {"min_deposit": "$1.00"}}]
    settings = {"withdraw_delay": "15m", "authorizer_key": "${CHANNEL_AUTHORIZER_KEY}"}
    return gateway_config(
        chain,
        origin.url,
        pay_to,
        {"url": facilitator_url, "timeout": "10s"},
        store,
        routes=routes,
        channels={**settings, **channels},
    )


def authorizer_env() -> dict[str, str]:
    account: LocalAccount = Account.create()
    return {"CHANNEL_AUTHORIZER_KEY": "0x" + bytes(account.key).hex()}


def channel_client(chain: Chain, payer: LocalAccount) -> x402Client:
    client = sdk.make_payer_client(payer, chain.rpc_url, [(chain.network, chain.token)])
    client.register_policy(prefer_scheme("batch-settlement"))
    return client


def mined_calls(rpc_url: str, first: int) -> Counter[str]:
    """What every transaction mined since block `first` did: `deposit` (through the deposit
    collector) or the batch-settlement function it called; anything else by its address."""
    w3 = chainlib.web3_for(rpc_url)
    batch = w3.eth.contract(address=BATCH_SETTLEMENT_ADDRESS, abi=BATCH_SETTLEMENT_ABI)
    calls: Counter[str] = Counter()
    for number in range(first, w3.eth.block_number + 1):
        for tx in w3.eth.get_block(number, full_transactions=True)["transactions"]:
            to = Web3.to_checksum_address(tx["to"])
            if to == ERC3009_DEPOSIT_COLLECTOR_ADDRESS:
                calls["deposit"] += 1
            elif to == BATCH_SETTLEMENT_ADDRESS:
                calls[batch.decode_function_input(tx["input"])[0].fn_name] += 1
            else:
                calls[to] += 1
    return calls


async def wait_for(check: Callable[[], bool], timeout: float) -> bool:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.2)
    return True


def metric(gw: GatewayProcess, name: str) -> float:
    with urllib.request.urlopen(gw.admin_url + "/metrics", timeout=5) as answer:
        text = answer.read().decode()
    lines = [line for line in text.splitlines() if line.startswith(name)]
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines)


def run_cli(gw: GatewayProcess, *args: str) -> subprocess.CompletedProcess[str]:
    """`x402-gateway ARGS --config` the gateway's own config file, its environment."""
    argv = [GATEWAY, *args, "--config", str(gw.config_path)]
    return subprocess.run(argv, check=False, env=gw.env, capture_output=True, text=True, timeout=60)


async def pay_calls(http: x402HttpxClient, gw: GatewayProcess, prefix: str, n: int) -> None:
    """`n` calls to the channel route (`/paid/<prefix>-<i>`), each paid and answered 200."""
    for i in range(n):
        answer = await http.get(f"{gw.url}/paid/{prefix}-{i}")
        assert answer.status_code == 200, answer.text


def the_channel(store: str, payer: str) -> Any:
    storage = RedisChannelStorage(store)
    try:
        (channel,) = [c for c in storage.list() if c.channel_config.payer.lower() == payer.lower()]
    finally:
        storage.close()
    return channel


async def test_200_calls_then_one_claim_transaction_and_the_payee_paid_exactly(
    chain: Chain,
    origin: Origin,
    facilitator_url: str,
    db: str,
    make_payer: Callable[..., LocalAccount],
    tmp_path: Path,
) -> None:
    pay_to = str(chainlib.new_account().address)
    payer = make_payer(2_000_000)
    # claim_over = 200 calls: the schedule claims right after the 200th, not before.
    cfg = config(chain, origin, pay_to, facilitator_url, db, claim_every="1h", claim_over="$0.20")
    gw = GatewayProcess(cfg, tmp_path, env=authorizer_env()).start()
    try:
        start = chainlib.block_number(chain.rpc_url) + 1
        async with x402HttpxClient(channel_client(chain, payer), timeout=30) as http:
            await pay_calls(http, gw, "call", 200)
        assert await wait_for(lambda: chain.balance_of(pay_to) > 0, timeout=30), gw.logs()
        await asyncio.sleep(6)  # a full round more (every 5 s): it must send nothing
        assert chain.balance_of(pay_to) == 200 * PRICE
        calls = mined_calls(chain.rpc_url, start)
        # One claim transaction: the facilitator (ours) claims and pays out in one multicall;
        # the schedule's settle then finds nothing to settle and sends nothing.
        assert calls == {"deposit": 1, "multicall": 1}, calls
        channel = the_channel(db, payer.address)
        assert int(channel.total_claimed) == int(channel.charged_cumulative_amount) == 200 * PRICE
        assert metric(gw, 'x402_gateway_channel_claims_total{outcome="claimed",reason="over"}') == 1
        assert metric(gw, "x402_gateway_channel_claimed_atomic_units_total") == 200 * PRICE
        assert metric(gw, "x402_gateway_channel_unclaimed_atomic_units") == 0
    finally:
        gw.stop()

    # The operator's view and a cooperative refund, from the command line (same config).
    listed = run_cli(gw, "channels", "--format", "jsonl")
    (row,) = [json.loads(line) for line in listed.stdout.splitlines()]
    assert (row["charged"], row["claimed"], row["unclaimed"]) == (200 * PRICE, 200 * PRICE, 0)
    refunded = run_cli(gw, "channels", "refund", row["channel"])
    assert refunded.returncode == 0, refunded.stderr
    assert chain.balance_of(payer.address) == 2_000_000 - 200 * PRICE  # the rest came back
    assert chain.balance_of(pay_to) == 200 * PRICE
    assert mined_calls(chain.rpc_url, start)["refundWithSignature"] == 1
    assert run_cli(gw, "channels", "--format", "jsonl").stdout == ""  # closed: forgotten


async def test_a_gateway_sigkilled_mid_run_loses_no_voucher(
    chain: Chain,
    origin: Origin,
    facilitator_url: str,
    db: str,
    make_payer: Callable[..., LocalAccount],
    tmp_path: Path,
) -> None:
    pay_to = str(chainlib.new_account().address)
    payer = make_payer(2_000_000)
    env = authorizer_env()
    cfg = config(chain, origin, pay_to, facilitator_url, db, claim_every="2s", claim_over="$5")
    first = GatewayProcess(cfg, tmp_path, env=env).start()
    served = 0

    async def pay_until_killed() -> None:
        nonlocal served
        async with x402HttpxClient(channel_client(chain, payer), timeout=30) as http:
            while True:
                try:
                    answer = await http.get(f"{first.url}/paid/run-{served}")
                except (httpx.TransportError, ClientPaymentError):
                    return  # the gateway is gone (the SDK wraps it when it was paying)
                if answer.status_code != 200:
                    return
                served += 1

    client = asyncio.create_task(pay_until_killed())
    try:
        assert await wait_for(lambda: served >= 150 or client.done(), timeout=120)
        assert first.proc is not None
        os.kill(first.proc.pid, signal.SIGKILL)  # mid-run: vouchers were coming in
        await asyncio.wait_for(client, timeout=30)
    finally:
        first.stop()
    assert served >= 150
    at_kill = the_channel(db, payer.address)
    charged = int(at_kill.charged_cumulative_amount)
    # Every answered call is charged; at most the one in flight at the kill beyond them.
    assert served * PRICE <= charged <= (served + 1) * PRICE
    assert int(at_kill.total_claimed) < charged  # the dead gateway left vouchers unclaimed

    second = GatewayProcess(cfg, tmp_path, env=env).start()  # the same config, restarted
    try:
        paid = await wait_for(lambda: chain.balance_of(pay_to) == charged, timeout=60)
        assert paid, (chain.balance_of(pay_to), charged, second.logs()[-3000:])
    finally:
        second.stop()
    channel = the_channel(db, payer.address)
    assert int(channel.total_claimed) == charged
    assert chain.balance_of(pay_to) == charged  # nothing claimed twice


async def test_channels_claim_on_demand_while_the_gateway_serves(
    chain: Chain,
    origin: Origin,
    facilitator_url: str,
    db: str,
    make_payer: Callable[..., LocalAccount],
    tmp_path: Path,
) -> None:
    pay_to = str(chainlib.new_account().address)
    payer = make_payer(2_000_000)
    cfg = config(chain, origin, pay_to, facilitator_url, db, claim_every="1h", claim_over="$5")
    gw = GatewayProcess(cfg, tmp_path, env=authorizer_env()).start()
    try:
        async with x402HttpxClient(channel_client(chain, payer), timeout=30) as http:
            await pay_calls(http, gw, "asked", 30)
        assert chain.balance_of(pay_to) == 0  # the schedule waits an hour
        start = chainlib.block_number(chain.rpc_url) + 1
        asked = run_cli(gw, "channels", "claim", "--all")
        assert asked.returncode == 0, asked.stderr
        (outcome,) = [json.loads(line) for line in asked.stdout.splitlines()]
        assert (outcome["reason"], outcome["vouchers"], outcome["amount"]) == ("asked", 1, 30_000)
        # The claim paid the payee out itself (one multicall): no separate settle was needed.
        assert outcome["error"] is None and len(outcome["claims"]) == 1
        assert outcome["settle"] is None
        assert chain.balance_of(pay_to) == 30 * PRICE
        assert mined_calls(chain.rpc_url, start) == {"multicall": 1}
        # The gateway serves on, on the same channel, and the next claim takes only the rest.
        async with x402HttpxClient(channel_client(chain, payer), timeout=30) as http:
            answer = await http.get(f"{gw.url}/paid/after")
        assert answer.status_code == 200, answer.text
        again = run_cli(gw, "channels", "claim", "--all")
        assert [json.loads(line)["amount"] for line in again.stdout.splitlines()] == [PRICE]
        assert chain.balance_of(pay_to) == 31 * PRICE
    finally:
        gw.stop()


async def test_vouchers_on_one_channel_across_a_reload_are_all_served_and_claimed(
    chain: Chain,
    origin: Origin,
    facilitator_url: str,
    db: str,
    make_payer: Callable[..., LocalAccount],
    tmp_path: Path,
) -> None:
    """A reload that builds new payments (the channels' settings changed) keeps the channel
    state: the retired generation closes none of what the new one reads, and the vouchers
    served before and after it are all charged and claimed."""
    pay_to = str(chainlib.new_account().address)
    payer = make_payer(2_000_000)
    cfg = config(chain, origin, pay_to, facilitator_url, db, claim_every="1h", claim_over="$5")
    gw = GatewayProcess(cfg, tmp_path, env=authorizer_env()).start()
    try:
        async with x402HttpxClient(channel_client(chain, payer), timeout=30) as http:
            await pay_calls(http, gw, "before", 20)
            written = yaml.safe_load(gw.config_path.read_text())
            written["channels"]["claim_every"] = "2h"  # new payments and channels
            gw.config_path.write_text(yaml.safe_dump(written, sort_keys=False))
            assert gw.proc is not None
            os.kill(gw.proc.pid, signal.SIGHUP)
            reloaded = await wait_for(
                lambda: metric(gw, "x402_gateway_config_generation") == 2, timeout=20
            )
            assert reloaded, gw.logs()[-3000:]
            await asyncio.sleep(1)  # generation 1 has no request in flight: it retires now
            await pay_calls(http, gw, "after", 20)
        events = [json.loads(x) for x in gw.logs().splitlines() if x.startswith("{")]
        (done,) = [e for e in events if e.get("event") == "config_reloaded"]
        assert done["rebuilt"] == ["facilitator"], done
        served = [
            c
            for c in origin.log.calls
            if "/paid/before-" in c["path"] or "/paid/after-" in c["path"]
        ]
        assert len(served) == 40
        channel = the_channel(db, payer.address)
        assert int(channel.charged_cumulative_amount) == 40 * PRICE
        asked = run_cli(gw, "channels", "claim", "--all")
        assert asked.returncode == 0, asked.stderr
        (outcome,) = [json.loads(line) for line in asked.stdout.splitlines()]
        assert (outcome["amount"], outcome["error"]) == (40 * PRICE, None), outcome
        assert chain.balance_of(pay_to) == 40 * PRICE  # every served voucher, paid on chain
    finally:
        gw.stop()


async def test_books_after_a_crash_agree_with_the_channel_state(
    chain: Chain,
    origin: Origin,
    facilitator_url: str,
    db: str,
    make_payer: Callable[..., LocalAccount],
    tmp_path: Path,
) -> None:
    """A gateway that died between a voucher's `settling` record and its outcome: the
    channel state (what the claims collect) had charged it, the chain knows nothing of a
    voucher. `payments --reconcile` reads the channel state: settled, never released; a
    voucher whose reservation was never charged is released."""
    pay_to = str(chainlib.new_account().address)
    payer = make_payer(2_000_000)
    cfg = config(chain, origin, pay_to, facilitator_url, db, claim_every="1h", claim_over="$5")
    cfg["networks"] = {chain.network: {"rpc_url": chain.rpc_url}}  # the chain is asked too
    gw = GatewayProcess(cfg, tmp_path, env=authorizer_env()).start()
    try:
        async with x402HttpxClient(channel_client(chain, payer), timeout=30) as http:
            await pay_calls(http, gw, "books", 3)
    finally:
        gw.stop()
    store = RedisStore(db)
    try:
        records = [r for r in await store.recent(10) if r.channel is not None]
        last = max(records, key=lambda r: int(r.cumulative or 0))
        assert (last.status, last.cumulative) == ("settled", str(3 * PRICE))
        # The store as the crash left it: the last voucher charged, its outcome never
        # written, by a holder long gone.
        crashed = dataclasses.replace(
            last, status="settling", holder="gone", updated_at=time.time() - 3600
        )
        await store.update(claim_key(last), crashed, 600)
        # ...and the next voucher, reserved and never charged.
        following = 4 * PRICE
        never = dataclasses.replace(
            crashed,
            request_id="never-charged",
            cumulative=str(following),
            nonce=voucher_nonce(str(last.channel), following),
        )
        assert await store.claim(claim_key(never), never, 600) is None
    finally:
        await store.close()
    reconciled = run_cli(gw, "payments", "--reconcile", "--limit", "20")
    assert reconciled.returncode == 0, reconciled.stderr
    now = {row["request_id"]: row["now"] for row in map(json.loads, reconciled.stdout.splitlines())}
    assert now == {last.request_id: "settled", "never-charged": "released"}, now
    channel = the_channel(db, payer.address)
    assert int(channel.charged_cumulative_amount) == 3 * PRICE
    asked = run_cli(gw, "channels", "claim", "--all")
    (outcome,) = [json.loads(line) for line in asked.stdout.splitlines()]
    assert outcome["amount"] == 3 * PRICE and chain.balance_of(pay_to) == 3 * PRICE


async def test_a_voucher_signature_the_chain_refuses_is_refused_and_what_was_served_is_claimed(
    chain: Chain,
    origin: Origin,
    facilitator_url: str,
    db: str,
    make_payer: Callable[..., LocalAccount],
    tmp_path: Path,
) -> None:
    """Red team (session 8): the payer's next voucher, its signature spelled as the
    contract's ECDSA will not take it (v as 0/1, or the high-s twin) though it recovers to the
    payer off chain, is refused (it used to be served, the first on the fast path and the
    second on the SDK's, then never claimable: the claim reverted). The same voucher as
    signed is served, and the claim pays the payee for every call served."""
    pay_to = str(chainlib.new_account().address)
    payer = make_payer(2_000_000)
    cfg = config(chain, origin, pay_to, facilitator_url, db, claim_every="1h", claim_over="$5")
    gw = GatewayProcess(cfg, tmp_path, env=authorizer_env()).start()
    try:
        client = channel_client(chain, payer)
        async with x402HttpxClient(client, timeout=30) as http:
            await pay_calls(http, gw, "recoded-open", 1)  # the deposit and its voucher
        async with httpx.AsyncClient(timeout=30) as http:
            required = payment_required(await http.get(f"{gw.url}/paid/recoded"))
            payload = await client.create_payment_payload(required)
            assert payload.payload["type"] == "voucher"
            signature = payload.payload["voucher"]["signature"]
            for how in ("v as 0/1", "high s"):
                raw = json.loads(json.dumps(payload.payload))
                raw["voucher"]["signature"] = recoded(signature, how)
                wire = payload.model_copy(update={"payload": raw})
                headers = {
                    "PAYMENT-SIGNATURE": header_of(wire.model_dump(by_alias=True, mode="json"))
                }
                refused = await http.get(f"{gw.url}/paid/recoded", headers=headers)
                assert refused.status_code == 402, (how, refused.text)
                assert payment_required(refused).error == ERR_INVALID_VOUCHER_SIGNATURE, how
            assert origin.log.for_path("/paid/recoded") == []
            as_signed = {
                "PAYMENT-SIGNATURE": header_of(payload.model_dump(by_alias=True, mode="json"))
            }
            served = await http.get(f"{gw.url}/paid/recoded", headers=as_signed)
            assert served.status_code == 200, served.text
        asked = run_cli(gw, "channels", "claim", "--all")
        assert asked.returncode == 0, asked.stderr
        (outcome,) = [json.loads(line) for line in asked.stdout.splitlines()]
        assert outcome["error"] is None, outcome
        assert chain.balance_of(pay_to) == 2 * PRICE  # both calls served, both paid
    finally:
        gw.stop()
