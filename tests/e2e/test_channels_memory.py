"""Vouchers on a gateway whose claims and channel state are in its own memory: the voucher
road (gateway/voucher_road.py, issue 14), through a real `x402-gateway` process, anvil with
the x402 contracts, the SDK facilitator over HTTP (the deposit) and the SDK's own
batch-settlement client. Nothing is mocked: what the payer sees, what the origin served,
what the metrics and the access lines count, and the channel state the gateway reports back
(its corrective 402) are checked, and no voucher sends a transaction.

(`test_channels.py` runs the same promises on two replicas sharing Redis: the full path.)
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from eth_account.signers.local import LocalAccount
from prometheus_client.parser import text_string_to_metric_families
from x402.http.utils import decode_payment_response_header
from x402.schemas import PaymentPayload

from gateway.demo import chain as chainlib
from tests.e2e.conftest import Chain
from tests.e2e.fault_parts import gateway_config
from tests.e2e.gateway_proc import GatewayProcess, Origin, gateway
from tests.e2e.test_channels import (
    COPIES,
    PRICE,
    _open_channel,
    channel_client,
    header_of,
    payment_required,
)

pytestmark = pytest.mark.e2e


def metric(gw: GatewayProcess, name: str, **want: str) -> float:
    text = httpx.get(gw.admin_url + "/metrics", timeout=5).text
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name and set(want.items()) <= set(s.labels.items())
    )


def paid_lines(gw: GatewayProcess, path: str) -> list[dict[str, Any]]:
    rows = [json.loads(x) for x in gw.logs().splitlines() if x.startswith("{")]
    return [r for r in rows if r.get("event") == "request" and r.get("path") == path]


async def test_vouchers_on_a_memory_gateway_buy_one_response_each_and_nothing_on_failure(
    chain: Chain,
    origin: Origin,
    pay_to: str,
    facilitator_url: str,
    make_payer: Callable[..., LocalAccount],
    tmp_path: Path,
) -> None:
    routes = [{"path": "/paid/*", "price": "$0.001", "channel": {"min_deposit": "$0.05"}}]
    facilitator = {"url": facilitator_url, "timeout": "10s"}
    cfg = gateway_config(chain, origin.url, pay_to, facilitator, "memory", routes=routes)
    payer = make_payer(1_000_000)
    client = channel_client(chain, payer)
    with gateway(cfg, tmp_path) as gw:
        _, required = await _open_channel(gw, client, "/paid/mem-open")
        payload = await client.create_payment_payload(required)
        assert isinstance(payload, PaymentPayload) and payload.payload["type"] == "voucher"
        header = {"PAYMENT-SIGNATURE": header_of(payload.model_dump(by_alias=True, mode="json"))}
        start = chainlib.block_number(chain.rpc_url)
        settled_before = metric(gw, "x402_gateway_payments_total", outcome="settled")
        limits = httpx.Limits(max_connections=COPIES)
        async with httpx.AsyncClient(limits=limits, timeout=30) as http:
            # The origin fails: nothing charged, the channel is free, the voucher still good.
            failed = await http.get(f"{gw.url}/paid/fail", headers=header)
            assert failed.status_code == 500, failed.text
            assert "PAYMENT-RESPONSE" not in failed.headers
            # Fifty copies of it at once: one response.
            answers = await asyncio.gather(
                *(http.get(f"{gw.url}/paid/mem-copies", headers=header) for _ in range(COPIES))
            )
            # Used: the corrective 402 with the channel's state (charged once).
            used = await http.get(f"{gw.url}/paid/mem-used", headers=header)
        statuses = sorted(a.status_code for a in answers)
        assert statuses.count(200) == 1, [(a.status_code, a.text[:200]) for a in answers]
        assert set(statuses) <= {200, 402, 409}, statuses
        (ok,) = [a for a in answers if a.status_code == 200]
        receipt = decode_payment_response_header(ok.headers["PAYMENT-RESPONSE"])
        assert receipt.success and receipt.transaction == ""
        assert receipt.extra is not None
        assert receipt.extra["channelState"]["chargedCumulativeAmount"] == str(2 * PRICE)
        assert ok.headers["Cache-Control"] == "private, no-store"
        (served_call,) = origin.log.for_path("/paid/mem-copies")
        assert served_call["headers"]["X-Payer"] == payer.address  # who paid, for the origin
        assert len(origin.log.for_path("/paid/fail")) == 1
        assert used.status_code == 402
        (offer,) = [a for a in payment_required(used).accepts if a.scheme == "batch-settlement"]
        assert offer.extra["channelState"]["chargedCumulativeAmount"] == str(2 * PRICE)
        # Counted as the full path counts a payment: one settled, the access line says so.
        settled = metric(gw, "x402_gateway_payments_total", outcome="settled") - settled_before
        assert settled == 1
        served = [r for r in paid_lines(gw, "/paid/mem-copies") if r["status"] == 200]
        assert len(served) == 1 and served[0]["payment"] == "settled"
        assert served[0]["payer"].lower() == payer.address.lower()
    assert chainlib.block_number(chain.rpc_url) == start  # vouchers: no transaction
