"""Replicas sharing one real redis-server: gateway processes (one of them with two workers on
one port), anvil, the SDK facilitator over HTTP and the SDK payer. Nothing is mocked."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from eth_account.signers.local import LocalAccount
from x402.http.utils import decode_payment_response_header

from gateway.demo.payer import make_x402_client, pay_challenge
from tests.e2e.conftest import Chain
from tests.e2e.fault_parts import PRICE, gateway_config, payments_cli
from tests.e2e.gateway_proc import GatewayProcess, Origin
from tests.procs import RedisServer

pytestmark = pytest.mark.e2e
COPIES = 40


@pytest.fixture(scope="module")
def replicas(
    chain: Chain,
    origin: Origin,
    pay_to: str,
    facilitator_url: str,
    redis: RedisServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[GatewayProcess, GatewayProcess]]:
    tmp = tmp_path_factory.mktemp("replicas")
    facilitator = {"url": facilitator_url, "timeout": "10s"}
    cfg = gateway_config(chain, origin.url, pay_to, facilitator, redis.url)
    one = GatewayProcess(cfg, tmp)
    two = GatewayProcess({**cfg, "workers": 2}, tmp)
    try:
        one.start(ready=False)
        two.start(ready=False)
        one.wait_ready()
        two.wait_ready()
        yield one, two
    finally:
        one.stop()
        two.stop()


async def signed(gw: GatewayProcess, payer: LocalAccount, chain: Chain, path: str) -> Any:
    async with httpx.AsyncClient() as http:
        challenge = await http.get(gw.url + path)
    assert challenge.status_code == 402, challenge.text
    client = make_x402_client(payer, [(chain.network, chain.token)])
    headers, payload = await pay_challenge(client, challenge.headers, challenge.content)
    return headers, payload


async def test_forty_copies_across_two_replicas_buy_one_response(
    replicas: tuple[GatewayProcess, GatewayProcess],
    origin: Origin,
    chain: Chain,
    pay_to: str,
    make_payer: Callable[..., LocalAccount],
) -> None:
    one, two = replicas
    payer = make_payer()
    headers, _ = await signed(one, payer, chain, "/paid/shared")
    txs = chain.tx_count(chain.facilitator_address)
    paid_to = chain.balance_of(pay_to)
    limits = httpx.Limits(max_connections=COPIES)
    async with httpx.AsyncClient(limits=limits, timeout=30) as http:
        answers = await asyncio.gather(
            *(
                http.get((one, two)[i % 2].url + "/paid/shared", headers=headers)
                for i in range(COPIES)
            )
        )
    statuses = sorted(a.status_code for a in answers)
    assert statuses.count(200) == 1, statuses
    assert statuses.count(409) == COPIES - 1, statuses
    assert len(origin.log.for_path("/paid/shared")) == 1
    assert chain.tx_count(chain.facilitator_address) == txs + 1
    assert chain.balance_of(payer.address) == 10_000_000 - PRICE
    assert chain.balance_of(pay_to) == paid_to + PRICE
    (ok,) = [a for a in answers if a.status_code == 200]
    transaction = decode_payment_response_header(ok.headers["PAYMENT-RESPONSE"]).transaction

    # Afterwards, either replica answers a retry from the record: 409 and the receipt.
    async with httpx.AsyncClient(timeout=10) as http:
        for gw in (one, two):
            again = await http.get(gw.url + "/paid/shared", headers=headers)
            assert again.status_code == 409, again.text
            assert again.json()["reason"] == "payment_already_used"
            receipt = decode_payment_response_header(again.headers["PAYMENT-RESPONSE"])
            assert receipt.transaction == transaction
    assert chain.tx_count(chain.facilitator_address) == txs + 1
    # The second replica really is two processes sharing its port.
    pids = {
        json.loads(line)["pid"]
        for line in two.logs().splitlines()
        if line.startswith("{") and json.loads(line).get("event") == "listening"
    }
    assert len(pids) == 2, two.logs()


async def test_payments_command_lists_the_records_for_the_books(
    replicas: tuple[GatewayProcess, GatewayProcess],
    chain: Chain,
    pay_to: str,
    make_payer: Callable[..., LocalAccount],
) -> None:
    one, two = replicas
    payer = make_payer()
    headers, payload = await signed(two, payer, chain, "/paid/books")
    async with httpx.AsyncClient(timeout=10) as http:
        r = await http.get(two.url + "/paid/books", headers=headers)
    assert r.status_code == 200, r.text
    transaction = decode_payment_response_header(r.headers["PAYMENT-RESPONSE"]).transaction
    nonce = payload.payload["authorization"]["nonce"]

    rows = [json.loads(line) for line in payments_cli(one).splitlines()]
    mine = [row for row in rows if row["payer"].lower() == payer.address.lower()]
    # One row per request in its latest state (its pending record came first).
    assert [row["status"] for row in mine] == ["settled"], mine
    (row,) = mine
    assert row["transaction"] == transaction
    assert (row["amount"], row["network"], row["route"]) == (str(PRICE), chain.network, "/paid/*")
    assert row["asset"].lower() == chain.token.lower()
    assert row["nonce"].lower() == nonce.lower()
    assert row["request_id"]

    table = list(csv.DictReader(io.StringIO(payments_cli(two, "csv", limit=5))))
    assert any(t["transaction"] == transaction and t["status"] == "settled" for t in table)
    assert set(table[0]) >= {"status", "request_id", "route", "payer", "amount", "nonce"}


def test_check_refuses_a_memory_store_with_several_workers(tmp_path: Path) -> None:
    cfg = {
        "upstream": "http://127.0.0.1:9",
        "facilitator": {"url": "http://127.0.0.1:9"},
        "pay_to": "0x000000000000000000000000000000000000dEaD",
        "store": "memory",
        "workers": 2,
        "routes": [{"path": "/paid/*", "price": "$0.001"}],
    }
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(cfg))
    exe = str(Path(sys.executable).with_name("x402-gateway"))
    out = subprocess.run(
        [exe, "check", "--config", str(path)], check=False, capture_output=True, timeout=30
    )
    assert out.returncode == 1
    assert "shared store" in out.stderr.decode()
    path.write_text(yaml.safe_dump({**cfg, "store": "redis://127.0.0.1:6379/0"}))
    ok = subprocess.run(
        [exe, "check", "--config", str(path)], check=False, capture_output=True, timeout=30
    )
    assert ok.returncode == 0, ok.stderr.decode()
