"""`x402-gateway facilitator` as a real process, with two real gateway replicas (`x402-gateway
serve`, one redis store) pointing their `facilitator.url` at it, paid by the SDK's client and
counted on the chain. Nothing here is mocked."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from x402.http.utils import decode_payment_response_header

from gateway.demo import chain as chainlib
from gateway.demo.payer import make_x402_client, pay_challenge
from tests.e2e import engine_parts
from tests.e2e.conftest import Chain
from tests.e2e.gateway_proc import GATEWAY, GatewayProcess, Origin, gateway
from tests.procs import RedisServer, free_port, stop, wait_port

pytestmark = pytest.mark.e2e
PRICE = 1000
PAYERS = 8
TOKEN = "facilitator-bearer-token-e2e"


@contextlib.contextmanager
def facilitator_process(
    tmp: Path, args: list[str], env: dict[str, str]
) -> Iterator[tuple[str, subprocess.Popen[bytes], Path]]:
    port = free_port()
    log = tmp / "facilitator.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [GATEWAY, "facilitator", "--listen", f"127.0.0.1:{port}", *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=os.environ | env,
        )
    try:
        wait_port(port, timeout=30, proc=proc)
        yield f"http://127.0.0.1:{port}", proc, log
    finally:
        stop(proc)


def gateway_config(
    chain: Chain, origin: Origin, pay_to: str, url: str, store: str
) -> dict[str, Any]:
    return {
        "upstream": origin.url,
        "facilitator": {"url": url, "headers": {"Authorization": "Bearer ${FAC_TOKEN}"}},
        "network": "eip155:84532",
        "pay_to": pay_to,
        "asset": {"address": chain.token, "name": "USD Coin", "version": "2", "decimals": 6},
        "store": store,
        "routes": [{"path": "/paid/*", "price": "$0.001"}],
    }


async def pay_once(
    gw: GatewayProcess, other: GatewayProcess, chain: Chain, path: str
) -> tuple[str, httpx.Response, httpx.Response]:
    """A fresh payer pays `path` on `gw`, then replays the same payment on `other`."""
    payer = await asyncio.to_thread(chain.local.new_payer, 10_000)
    client = make_x402_client(payer, [(chain.network, chain.token)])
    async with httpx.AsyncClient(timeout=60) as http:
        challenge = await http.get(gw.url + path)
        assert challenge.status_code == 402, challenge.text
        headers, _ = await pay_challenge(client, challenge.headers, challenge.content)
        paid = await http.get(gw.url + path, headers=headers)
        replay = await http.get(other.url + path, headers=headers)
    return payer.address.lower(), paid, replay


async def test_two_gateway_replicas_share_one_facilitator_process(
    chain: Chain, origin: Origin, redis: RedisServer, tmp_path: Path
) -> None:
    keys = engine_parts.settler_keys(chain.rpc_url, 2)
    pay_to = str(chainlib.new_account().address)
    env = {"SETTLER_A": keys[0], "SETTLER_B": keys[1], "FAC_TOKEN": TOKEN}
    flags = [
        *("--rpc-url", chain.rpc_url, "--key-env", "SETTLER_A", "--key-env", "SETTLER_B"),
        *("--chain-id", str(chainlib.BASE_SEPOLIA_CHAIN_ID), "--token-env", "FAC_TOKEN"),
        *("--batch-window", "20ms", "--max-batch", "8", "--min-gas-balance", "0.001 eth"),
    ]
    with facilitator_process(tmp_path, flags, env) as (url, proc, log):
        async with httpx.AsyncClient() as http:
            unauthorized = await http.get(url + "/supported")
            ready = await http.get(url + "/readyz", headers={"Authorization": f"Bearer {TOKEN}"})
        cfg = gateway_config(chain, origin, pay_to, url, redis.url)
        with (
            gateway(cfg, tmp_path, env={"FAC_TOKEN": TOKEN}) as a,
            gateway(cfg, tmp_path, env={"FAC_TOKEN": TOKEN}) as b,
        ):
            results = await asyncio.gather(
                *(
                    pay_once(*((a, b) if i % 2 else (b, a)), chain, f"/paid/fac-{i}")
                    for i in range(PAYERS)
                )
            )
        code = stop(proc)
    assert unauthorized.status_code == 401 and ready.status_code == 200
    assert code == 0  # SIGTERM: in-flight requests finish, the engine closes, exit 0
    transfers = engine_parts.transfers_to(chain.local, pay_to)
    by_payer = {t.payer: t for t in transfers}
    assert len(by_payer) == len(transfers) == PAYERS, "a payer was charged twice or not at all"
    for payer, paid, replay in results:
        assert paid.status_code == 200, paid.text
        settled = decode_payment_response_header(paid.headers["PAYMENT-RESPONSE"])
        assert settled.success and settled.transaction == by_payer[payer].tx
        assert replay.status_code == 409, replay.text  # the other replica: already used
    assert chain.balance_of(pay_to) == PRICE * PAYERS
    senders = {
        engine_parts.rpc(chain.rpc_url, "eth_getTransactionByHash", t.tx)["from"].lower()
        for t in transfers
    }
    assert senders <= {engine_parts.address_of(k).lower() for k in keys}
    assert all(len(origin.log.for_path(f"/paid/fac-{i}")) == 1 for i in range(PAYERS))
    text = log.read_text(errors="replace")
    assert "listening on" in text
    assert all(secret not in text for secret in (keys[0][2:], keys[1][2:], TOKEN))
