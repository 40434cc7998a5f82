"""Request rates end to end: two real gateway processes sharing a real redis-server, anvil,
the SDK facilitator over HTTP (behind a relay that counts its calls) and the SDK payer.
A flood from one payer is refused with 429 before any facilitator call; the buckets are
shared by the replicas; nothing refused is charged."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from eth_account.signers.local import LocalAccount

from gateway.demo.payer import make_x402_client, pay_challenge
from tests.e2e.conftest import Chain
from tests.e2e.fault_parts import PRICE, gateway_config, running
from tests.e2e.gateway_proc import GatewayProcess, Origin
from tests.e2e.owner_parts import CountingRelay
from tests.procs import RedisServer

pytestmark = pytest.mark.e2e
FLOOD = 100
RATE = 10  # per_payer: 10/s
SEND_EVERY = 1 / 50  # 50 requests a second


@pytest.fixture(scope="module")
def limited(
    chain: Chain,
    origin: Origin,
    pay_to: str,
    facilitator_url: str,
    redis: RedisServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[GatewayProcess, GatewayProcess, CountingRelay]]:
    relay = CountingRelay(facilitator_url).start()
    tmp = tmp_path_factory.mktemp("limits")
    cfg = gateway_config(
        chain,
        origin.url,
        pay_to,
        {"url": relay.url, "timeout": "10s"},
        redis.url,
        limits={"per_payer": f"{RATE}/s"},
    )
    cfg["routes"].append({"path": "/ip/*", "price": "$0.001", "limits": {"per_ip": "3/m"}})
    one, two = GatewayProcess(cfg, tmp), GatewayProcess(cfg, tmp)
    with running(relay, one, two):
        one.start(ready=False)
        two.start(ready=False)
        one.wait_ready()
        two.wait_ready()
        yield one, two, relay


async def signed_payments(
    gw: GatewayProcess, chain: Chain, payer: LocalAccount, n: int
) -> list[Any]:
    """`n` distinct payments (each its own authorization nonce) from one payer."""
    async with httpx.AsyncClient() as http:
        challenge = await http.get(gw.url + "/paid/flood")
    assert challenge.status_code == 402
    client = make_x402_client(payer, [(chain.network, chain.token)])
    return [
        (await pay_challenge(client, challenge.headers, challenge.content))[0] for _ in range(n)
    ]


async def test_a_flood_from_one_payer_gets_429s_and_costs_no_facilitator_call(
    limited: tuple[GatewayProcess, GatewayProcess, CountingRelay],
    chain: Chain,
    pay_to: str,
    make_payer: Callable[..., LocalAccount],
) -> None:
    one, two, relay = limited
    payer = make_payer()
    payments = await signed_payments(one, chain, payer, FLOOD)
    verified, settled = relay.count("verify"), relay.count("settle")
    txs, paid_to = chain.tx_count(chain.facilitator_address), chain.balance_of(pay_to)

    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=FLOOD)) as http:
        started = time.monotonic()
        sent = []
        for i, headers in enumerate(payments):  # 50 a second, alternating the replicas
            target = (one, two)[i % 2].url + "/paid/flood"
            sent.append(asyncio.create_task(http.get(target, headers=headers)))
            await asyncio.sleep(SEND_EVERY)
        answers = await asyncio.gather(*sent)
        elapsed = time.monotonic() - started

    statuses = [a.status_code for a in answers]
    ok, refused = statuses.count(200), statuses.count(429)
    assert ok + refused == FLOOD, statuses
    # A bucket of 10 refilled at 10/s, shared by both replicas through Redis.
    assert RATE <= ok <= RATE + RATE * elapsed + 1, (ok, elapsed)
    assert refused >= FLOOD - (RATE + RATE * elapsed + 1)
    for answer in answers:
        if answer.status_code == 429:
            assert int(answer.headers["Retry-After"]) >= 1
            assert answer.json()["reason"] == "rate_limited"
            assert "PAYMENT-RESPONSE" not in answer.headers
    # Only the requests let through cost a facilitator call; the 429s cost none.
    assert relay.count("verify") - verified == ok
    assert relay.count("settle") - settled == ok
    # On chain: exactly one transfer per 200, nothing for a 429.
    assert chain.tx_count(chain.facilitator_address) == txs + ok
    assert chain.balance_of(pay_to) == paid_to + ok * PRICE
    assert chain.balance_of(payer.address) == 10_000_000 - ok * PRICE
    print(f"\nflood: {FLOOD} requests in {elapsed:.2f}s -> {ok} x 200, {refused} x 429")


async def test_per_ip_limit_refuses_before_the_challenge(
    limited: tuple[GatewayProcess, GatewayProcess, CountingRelay],
) -> None:
    one, two, relay = limited
    verified = relay.count("verify")
    async with httpx.AsyncClient(timeout=10) as http:
        statuses = [(await http.get((one, two)[i % 2].url + "/ip/x")).status_code for i in range(5)]
    assert statuses == [402, 402, 402, 429, 429]
    assert relay.count("verify") == verified


async def test_a_daily_spend_cap_refuses_the_payment_that_would_pass_it(
    chain: Chain,
    origin: Origin,
    pay_to: str,
    facilitator_url: str,
    tmp_path_factory: pytest.TempPathFactory,
    make_payer: Callable[..., LocalAccount],
) -> None:
    relay = CountingRelay(facilitator_url).start()
    cfg = gateway_config(
        chain,
        origin.url,
        pay_to,
        {"url": relay.url},
        "memory",
        limits={"daily_spend": "$0.002"},
    )
    gw = GatewayProcess(cfg, tmp_path_factory.mktemp("spend"))
    with running(relay, gw):
        gw.start()
        payer = make_payer()
        payments = await signed_payments(gw, chain, payer, 3)
        verified = relay.count("verify")
        async with httpx.AsyncClient(timeout=30) as http:
            answers = [await http.get(gw.url + "/paid/flood", headers=h) for h in payments]
    assert [a.status_code for a in answers] == [200, 200, 429]
    assert answers[2].json()["reason"] == "daily_spend_reached"
    assert relay.count("verify") - verified == 2
    assert chain.balance_of(payer.address) == 10_000_000 - 2 * PRICE
