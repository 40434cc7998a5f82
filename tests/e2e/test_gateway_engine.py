"""A real gateway process settling through the settlement engine (`facilitator: {local:}`):
several settler keys, a batch window, the SDK's paying client, every charge counted on the
chain from the token's logs. Nothing here is mocked."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest
from x402.http.utils import decode_payment_response_header

from gateway.demo import chain as chainlib
from gateway.demo.payer import make_x402_client, pay_challenge
from tests.e2e import engine_parts
from tests.e2e.conftest import Chain
from tests.e2e.gateway_proc import GatewayProcess, Origin, gateway
from tests.procs import wait_port

pytestmark = pytest.mark.e2e
PRICE = 1000  # $0.001 in 6-decimal USDC
PAYERS = 12


def config(chain: Chain, origin: Origin, pay_to: str, local: dict[str, Any]) -> dict[str, Any]:
    return {
        "upstream": origin.url,
        "facilitator": {"local": local},
        "network": "eip155:84532",
        "pay_to": pay_to,
        "asset": {"address": chain.token, "name": "USD Coin", "version": "2", "decimals": 6},
        "store": "memory",
        "routes": [{"path": "/free/*", "price": "free"}, {"path": "/paid/*", "price": "$0.001"}],
    }


async def paid_get(gw: GatewayProcess, chain: Chain, path: str) -> tuple[str, httpx.Response]:
    """A fresh payer pays for `path` once; (payer address, the gateway's answer)."""
    payer = await asyncio.to_thread(chain.local.new_payer, 10_000)
    client = make_x402_client(payer, [(chain.network, chain.token)])
    async with httpx.AsyncClient(timeout=60) as http:
        challenge = await http.get(gw.url + path)
        assert challenge.status_code == 402, challenge.text
        headers, _ = await pay_challenge(client, challenge.headers, challenge.content)
        paid = await http.get(gw.url + path, headers=headers)
        again = await http.get(gw.url + path, headers=headers)
    assert again.status_code == 409, again.text  # one payment buys one response
    return payer.address.lower(), paid


async def test_gateway_settles_concurrent_payments_in_batches_over_several_keys(
    chain: Chain, origin: Origin, tmp_path: Path
) -> None:
    keys = engine_parts.settler_keys(chain.rpc_url, 3)
    delegate = engine_parts.settler_keys(chain.rpc_url, 1)[0]
    pay_to = str(chainlib.new_account().address)
    env = {f"SETTLER_{i}": key for i, key in enumerate(keys)} | {"DELEGATE_KEY": delegate}
    local = {
        "rpc_url": chain.rpc_url,
        "private_key": "${SETTLER_0}",
        "keys": ["${SETTLER_1}", "${SETTLER_2}"],
        "delegate_key": "${DELEGATE_KEY}",
        "batch_window": "20ms",
        "max_batch": 8,
        "poll_interval": "50ms",
        "min_gas_balance": "0.001 eth",
    }
    with gateway(config(chain, origin, pay_to, local), tmp_path, env=env) as gw:
        results = await asyncio.gather(
            *(paid_get(gw, chain, f"/paid/engine-{i}") for i in range(PAYERS))
        )
        async with httpx.AsyncClient() as http:
            free = await http.get(gw.url + "/free/ok")
            metrics = (await http.get(gw.admin_url + "/metrics")).text
        logs = gw.logs()
    assert free.status_code == 200
    transfers = engine_parts.transfers_to(chain.local, pay_to)
    by_payer = {t.payer: t for t in transfers}
    assert len(by_payer) == len(transfers) == PAYERS, "a payer was charged twice or not at all"
    senders = set()
    for payer, paid in results:
        assert paid.status_code == 200, paid.text
        settled = decode_payment_response_header(paid.headers["PAYMENT-RESPONSE"])
        assert settled.success and settled.transaction == by_payer[payer].tx
        assert by_payer[payer].value == PRICE
        tx = engine_parts.rpc(chain.rpc_url, "eth_getTransactionByHash", settled.transaction)
        senders.add(tx["from"].lower())
    assert chain.balance_of(pay_to) == PRICE * PAYERS
    # settled by the engine's keys only; the delegate's key never sent anything
    assert senders <= {engine_parts.address_of(k).lower() for k in keys}
    assert chainlib.tx_count(chain.rpc_url, engine_parts.address_of(delegate)) == 0
    # fewer transactions than payments: the batch window grouped some
    assert len({t.tx for t in transfers}) < PAYERS
    assert all(key[2:] not in logs for key in (*keys, delegate))
    # the engine's metrics: one batch-size sample per transaction, each key's gas balance
    sent = len({t.tx for t in transfers})
    assert f"x402_gateway_engine_batch_size_count {float(sent)}" in metrics
    assert f"x402_gateway_engine_batch_size_sum {float(PAYERS)}" in metrics
    assert f"x402_gateway_engine_receipt_seconds_count {float(sent)}" in metrics
    for key in keys:
        assert (
            f'x402_gateway_settler_gas_balance_wei{{address="{engine_parts.address_of(key)}"}}'
            in metrics
        )
    assert 'x402_gateway_engine_events_total{event="settled"} 12.0' in metrics
    assert "x402_gateway_engine_pending_transactions 0.0" in metrics
    # each paid path reached the origin exactly once (the replays were refused before it)
    assert all(len(origin.log.for_path(f"/paid/engine-{i}")) == 1 for i in range(PAYERS))


async def test_readiness_fails_while_a_settler_is_below_its_gas_floor(
    chain: Chain, origin: Origin, tmp_path: Path
) -> None:
    (key,) = engine_parts.settler_keys(chain.rpc_url, 1)  # holds 1 ETH
    pay_to = str(chainlib.new_account().address)
    local = {"rpc_url": chain.rpc_url, "private_key": "${SETTLER}", "min_gas_balance": "2 eth"}
    cfg = config(chain, origin, pay_to, local)
    with gateway(cfg, tmp_path, env={"SETTLER": key}, ready=False) as gw:
        await asyncio.to_thread(wait_port, gw.admin_port, 20.0, gw.proc)  # never ready
        async with httpx.AsyncClient() as http:
            ready = await http.get(gw.admin_url + "/readyz")
            challenge = await http.get(gw.url + "/paid/x")
            free = await http.get(gw.url + "/free/x")
        logs = gw.logs()
    assert ready.status_code == 503 and "settler gas below" in ready.text
    assert challenge.status_code == 402 and free.status_code == 200
    assert key[2:] not in logs
