"""Operations end to end: Prometheus metrics, access lines, hot reload, `check --online`,
`routes`. A real gateway process, anvil, the SDK's facilitator over HTTP and the SDK's
paying client; nothing mocked."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from eth_account.signers.local import LocalAccount
from prometheus_client.parser import text_string_to_metric_families
from x402.http.utils import (
    decode_payment_required_header,
    decode_payment_response_header,
    decode_payment_signature_header,
)
from x402.schemas import PaymentRequired

from gateway.demo.payer import make_x402_client, pay_challenge
from tests.e2e.conftest import Chain
from tests.e2e.gateway_proc import GATEWAY, GatewayProcess, Origin, gateway
from tests.procs import RedisServer, free_port, wait_port

pytestmark = pytest.mark.e2e
SECRET = "secret-token-xyz"
PRICE, NEW_PRICE = 1000, 2000
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture
def client_for(chain: Chain) -> Callable[[LocalAccount], Any]:
    return lambda account: make_x402_client(account, [(chain.network, chain.token)])


def config(
    chain: Chain, origin: Origin, pay_to: str, facilitator_url: str, price: str = "$0.001"
) -> dict[str, Any]:
    return {
        "upstream": origin.url,
        "facilitator": {
            "url": facilitator_url,
            "headers": {"Authorization": f"Bearer {SECRET}"},
            "timeout": "10s",
        },
        "network": "eip155:84532",
        "pay_to": pay_to,
        "asset": {"address": chain.token, "name": "USD Coin", "version": "2", "decimals": 6},
        "store": "memory",
        "routes": [
            {"path": "/free/*", "price": "free"},
            {"path": "/paid/*", "price": price, "description": "A paid report"},
        ],
    }


def write_config(gw: GatewayProcess, cfg: dict[str, Any]) -> None:
    """Replace the gateway's config file the way editors and config managers do: atomically."""
    full = {"listen": f"127.0.0.1:{gw.port}", "admin": f"127.0.0.1:{gw.admin_port}", **cfg}
    tmp = gw.config_path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(full, sort_keys=False))
    tmp.replace(gw.config_path)


def scrape(gw: GatewayProcess) -> Samples:
    text = httpx.get(gw.admin_url + "/metrics").text
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def log_lines(gw: GatewayProcess) -> list[dict[str, Any]]:
    return [json.loads(line) for line in gw.logs().splitlines() if line.strip()]


def access_lines(gw: GatewayProcess) -> list[dict[str, Any]]:
    return [e for e in log_lines(gw) if e.get("logger") == "gateway.access"]


def wait_for(check: Callable[[], Any], timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(0.05)


async def challenge_amount(http: httpx.AsyncClient, url: str) -> int:
    r = await http.get(url)
    assert r.status_code == 402, r.text
    required = decode_payment_required_header(r.headers["PAYMENT-REQUIRED"])
    assert isinstance(required, PaymentRequired)
    (req,) = required.accepts
    return int(req.amount)


# --- metrics and access lines ------------------------------------------------------------


async def test_metrics_and_access_lines_after_paid_and_free_requests(
    chain: Chain,
    origin: Origin,
    pay_to: str,
    facilitator_url: str,
    payer: LocalAccount,
    client_for: Callable[[LocalAccount], Any],
    tmp_path: Path,
) -> None:
    cfg = config(chain, origin, pay_to, facilitator_url)
    # A dead facilitator first: failover to the real one, and a failure counted for it.
    dead = f"http://127.0.0.1:{free_port()}"
    cfg["facilitator"] = [{"url": dead, "timeout": "2s"}, cfg["facilitator"]]
    with gateway(cfg, tmp_path) as gw:
        async with httpx.AsyncClient(timeout=30) as http:
            free = await http.get(gw.url + "/free/a", headers={"X-Request-Id": "client-chosen"})
            big = await http.get(gw.url + "/free/big", params={"bytes": "300000"})
            unpaid = await http.get(gw.url + "/paid/report")
            headers, payload = await pay_challenge(
                client_for(payer), unpaid.headers, unpaid.content
            )
            paid = await http.get(gw.url + "/paid/report", headers=headers)
            replay = await http.get(gw.url + "/paid/report", headers=headers)
            garbage = await http.get(
                gw.url + "/paid/report", headers={"PAYMENT-SIGNATURE": "not a payment"}
            )
        assert (free.status_code, big.status_code, unpaid.status_code) == (200, 200, 402)
        assert len(big.content) == 300000
        assert (paid.status_code, replay.status_code, garbage.status_code) == (200, 409, 400)
        receipt = decode_payment_response_header(paid.headers["PAYMENT-RESPONSE"])
        assert receipt.success

        m = scrape(gw)
        requests = "x402_gateway_requests_total"
        assert value(m, requests, route="/free/*", method="GET", status="200") == 2
        for status, count in (("402", 1), ("200", 1), ("409", 1), ("400", 1)):
            assert value(m, requests, route="/paid/*", method="GET", status=status) == count
        payments = "x402_gateway_payments_total"
        assert value(m, payments, outcome="verified", reason="") == 1
        assert value(m, payments, outcome="settled", reason="") == 1
        assert value(m, payments, outcome="replayed", reason="payment_already_used") == 1
        assert value(m, payments, outcome="invalid", reason="invalid_base64") == 1
        revenue = "x402_gateway_revenue_atomic_units_total"
        required = decode_payment_required_header(unpaid.headers["PAYMENT-REQUIRED"])
        assert isinstance(required, PaymentRequired)
        asset = required.accepts[0]
        labels = {"asset": asset.asset, "network": chain.network, "route": "/paid/*"}
        assert value(m, revenue, **labels) == PRICE
        for hist in ("verify", "settle", "origin_ttfb"):
            assert value(m, f"x402_gateway_{hist}_seconds_count") == 1, hist
        duration = "x402_gateway_request_duration_seconds_count"
        assert value(m, duration, route="/paid/*") == 4
        assert value(m, duration, route="/free/*") == 2
        assert value(m, "x402_gateway_in_flight_requests") == 0
        assert value(m, "x402_gateway_config_generation") == 1
        assert value(m, "x402_gateway_config_reload_failures_total") == 0
        failures = "x402_gateway_facilitator_failures_total"
        assert value(m, failures, facilitator=dead, operation="supported") >= 1
        assert value(m, failures, facilitator=dead, operation="verify") == 1
        assert value(m, failures, facilitator=facilitator_url, operation="verify") == 0
        assert not [k for k in m if k[0] == "x402_gateway_dependency_errors_total"]

        # The access line is written once the response has gone: wait for the last one.
        access = wait_for(lambda: len(access_lines(gw)) == 6 and access_lines(gw))
        assert len(access) == 6
        lines = log_lines(gw)  # every line is JSON (json.loads would have raised)
        by_status = {(e["path"], e["status"]): e for e in access}
        free_line = by_status[("/free/a", 200)]
        assert re.fullmatch(r"[0-9a-f]{24,}", free_line["request_id"])  # not the client's
        (seen,) = origin.log.for_path("/free/a")
        sent = {k.lower(): v for k, v in seen["headers"].items()}
        assert sent["x-request-id"] == free_line["request_id"]
        assert by_status[("/free/big", 200)]["bytes"] > 300000  # head + body
        paid_line = by_status[("/paid/report", 200)]
        assert paid_line["route"] == "/paid/*" and paid_line["payment"] == "settled"
        assert paid_line["payer"] == payer.address and paid_line["amount"] == str(PRICE)
        assert paid_line["asset"] == asset.asset and paid_line["network"] == chain.network
        assert paid_line["transaction"] == receipt.transaction
        assert paid_line["bytes"] > len(paid.content)
        assert {"verify_ms", "settle_ms", "origin_ms", "duration_ms"} <= paid_line.keys()
        assert by_status[("/paid/report", 409)]["payment"] == "replayed"
        assert by_status[("/paid/report", 400)]["payment_reason"] == "invalid_base64"

        header = headers["PAYMENT-SIGNATURE"]
        signature = decode_payment_signature_header(header).payload["signature"]
        assert signature == payload.payload["signature"]
        text = gw.logs()
        for secret in (header, signature, signature.removeprefix("0x"), SECRET):
            assert secret not in text
        assert any(e.get("event") == "listening" for e in lines)


# --- hot reload --------------------------------------------------------------------------


async def test_reload_on_sighup_keeps_in_flight_requests_and_rejects_an_invalid_file(
    chain: Chain,
    origin: Origin,
    pay_to: str,
    facilitator_url: str,
    payer: LocalAccount,
    client_for: Callable[[LocalAccount], Any],
    tmp_path: Path,
) -> None:
    cfg = config(chain, origin, pay_to, facilitator_url)
    with gateway(cfg, tmp_path) as gw:
        assert gw.proc is not None
        async with httpx.AsyncClient(timeout=30) as http:
            slow_url = gw.url + "/paid/slow?s=2"
            unpaid = await http.get(slow_url)
            headers, _ = await pay_challenge(client_for(payer), unpaid.headers, unpaid.content)
            in_flight = asyncio.create_task(http.get(slow_url, headers=headers))
            # Past verification and at the origin: the request holds the old generation.
            assert await asyncio.to_thread(wait_for, lambda: origin.log.for_path("/paid/slow"))

            new = config(chain, origin, pay_to, facilitator_url, price="$0.002")
            # New timeouts: a new upstream pool and facilitator client, while the request in
            # flight still needs the old ones (to stream and to settle). log_level: restart.
            new["facilitator"]["timeout"] = "9s"
            new["timeouts"] = {"read": "30s"}
            write_config(gw, {**new, "log_level": "debug"})
            os.kill(gw.proc.pid, signal.SIGHUP)
            live = await asyncio.to_thread(
                wait_for,
                lambda: httpx.get(gw.admin_url + "/routes").json()["generation"] == 2,
            )
            assert live, gw.logs()
            assert not in_flight.done()
            assert await challenge_amount(http, gw.url + "/paid/next") == NEW_PRICE

            done = await in_flight
            assert done.status_code == 200, done.text
            receipt = decode_payment_response_header(done.headers["PAYMENT-RESPONSE"])
            assert receipt.success
            slow = wait_for(
                lambda: (
                    len(found := [e for e in access_lines(gw) if e["path"] == "/paid/slow"]) == 2
                    and found
                )
            )
            assert [e["status"] for e in slow] == [402, 200]
            line = slow[1]
            assert line["generation"] == 1 and line["payment"] == "settled"
            assert line["amount"] == str(PRICE)

            routes = subprocess.run(
                [GATEWAY, "routes", "--config", str(gw.config_path)],
                capture_output=True,
                text=True,
                timeout=30,
                check=True,
            )
            assert "generation 2" in routes.stdout and "$0.002" in routes.stdout

            bad = {**new, "routes": [{"path": "/paid/*", "price": "lots"}]}
            write_config(gw, bad)
            os.kill(gw.proc.pid, signal.SIGHUP)
            failures = "x402_gateway_config_reload_failures_total"
            assert await asyncio.to_thread(wait_for, lambda: value(scrape(gw), failures) == 1)
            m = scrape(gw)
            assert value(m, "x402_gateway_config_generation") == 2
            assert value(m, "x402_gateway_payments_total", outcome="settled", reason="") == 1
            assert await challenge_amount(http, gw.url + "/paid/next") == NEW_PRICE
            free = await http.get(gw.url + "/free/still")
            assert free.status_code == 200

        events = log_lines(gw)
        (failed,) = [e for e in events if e["event"] == "config_reload_failed"]
        assert failed["level"] == "error" and failed["generation"] == 2
        assert any(str(gw.config_path) in err and "price" in err for err in failed["errors"])
        (reloaded,) = [e for e in events if e["event"] == "config_reloaded"]
        assert reloaded["generation"] == 2 and reloaded["rebuilt"] == ["facilitator", "upstream"]
        (restart,) = [e for e in events if e["event"] == "config_needs_restart"]
        assert restart["setting"] == "log_level"
        assert not [e for e in events if e["level"] == "debug"]  # the running level kept
        assert SECRET not in gw.logs()


class WatchingGateway(GatewayProcess):
    """`x402-gateway serve --watch`."""

    def start(self, ready: bool = True) -> WatchingGateway:
        with self.log_path.open("wb") as out:
            self.proc = subprocess.Popen(
                [GATEWAY, "serve", "--watch", "--config", str(self.config_path)],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env,
            )
        wait_port(self.port, 20, self.proc)
        self.wait_ready()
        return self


async def test_serve_watch_reloads_when_the_file_changes(
    chain: Chain, origin: Origin, pay_to: str, facilitator_url: str, tmp_path: Path
) -> None:
    gw = WatchingGateway(config(chain, origin, pay_to, facilitator_url), tmp_path).start()
    try:
        async with httpx.AsyncClient(timeout=30) as http:
            assert await challenge_amount(http, gw.url + "/paid/x") == PRICE
            write_config(gw, config(chain, origin, pay_to, facilitator_url, price="$0.002"))
            generation = await asyncio.to_thread(
                wait_for, lambda: value(scrape(gw), "x402_gateway_config_generation") == 2
            )
            assert generation, gw.logs()
            assert await challenge_amount(http, gw.url + "/paid/x") == NEW_PRICE
    finally:
        gw.stop()


# --- check --online ----------------------------------------------------------------------


def test_check_online_names_every_route_the_facilitator_cannot_serve(
    chain: Chain, origin: Origin, pay_to: str, facilitator_url: str, tmp_path: Path
) -> None:
    supported = httpx.get(facilitator_url + "/supported").json()
    networks = {kind["network"] for kind in supported["kinds"]}
    assert chain.network in networks and "eip155:8453" not in networks
    cfg = config(chain, origin, pay_to, facilitator_url)
    base_usdc = "0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913"
    mainnet = {"scheme": "exact", "network": "eip155:8453", "asset": base_usdc, "amount": "10000"}
    cfg["routes"].append({"path": "/mainnet/*", "accepts": [mainnet]})
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump({"listen": "127.0.0.1:0", **cfg}, sort_keys=False))

    done = subprocess.run(
        [GATEWAY, "check", "--online", "--config", str(path)],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        "error: routes[2] /mainnet/*: no facilitator supports exact on eip155:8453"
    ], done.stderr
    assert SECRET not in done.stdout + done.stderr

    cfg["routes"].pop()
    path.write_text(yaml.safe_dump({"listen": "127.0.0.1:0", **cfg}, sort_keys=False))
    ok = subprocess.run(
        [GATEWAY, "check", "--online", "--config", str(path)],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ok.returncode == 0, ok.stderr
    assert "every priced route is supported" in ok.stdout


def test_routes_without_a_running_gateway_prints_the_file_table_with_a_note(
    chain: Chain, origin: Origin, pay_to: str, facilitator_url: str, tmp_path: Path
) -> None:
    cfg = config(chain, origin, pay_to, facilitator_url)
    path = tmp_path / "gateway.yaml"
    admin = f"127.0.0.1:{free_port()}"
    path.write_text(
        yaml.safe_dump({"listen": "127.0.0.1:0", "admin": admin, **cfg}, sort_keys=False)
    )
    done = subprocess.run(
        [GATEWAY, "routes", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert "no gateway answered" in done.stderr and str(path) in done.stderr
    assert "/paid/*" in done.stdout and "$0.001" in done.stdout
    assert "generation" not in done.stdout


async def test_sighup_reaches_every_worker(
    chain: Chain,
    origin: Origin,
    pay_to: str,
    facilitator_url: str,
    redis: RedisServer,
    tmp_path: Path,
) -> None:
    cfg = {**config(chain, origin, pay_to, facilitator_url), "workers": 2, "store": redis.url}
    with gateway(cfg, tmp_path) as gw:
        assert gw.proc is not None
        new = config(chain, origin, pay_to, facilitator_url, "$0.002")
        write_config(gw, {**new, "workers": 2, "store": redis.url})
        os.kill(gw.proc.pid, signal.SIGHUP)  # the supervisor passes it on
        reloaded = await asyncio.to_thread(
            wait_for,
            lambda: len([e for e in log_lines(gw) if e["event"] == "config_reloaded"]) == 2,
        )
        assert reloaded, gw.logs()
        assert gw.proc.poll() is None
        amounts = set()
        for _ in range(8):  # new connections, spread over both workers by the kernel
            async with httpx.AsyncClient(timeout=30) as http:
                amounts.add(await challenge_amount(http, gw.url + "/paid/x"))
        assert amounts == {NEW_PRICE}
